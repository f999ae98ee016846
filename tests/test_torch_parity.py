"""Our LSTM (psug off, hgr off) equals nn.LSTM and our GRU equals nn.GRU, stacked, bidirectional,
on packed ragged batches, outputs, final states and gradients.  Skipped without torch."""
import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng

torch = pytest.importorskip("torch")


def copy_weights(ours, theirs, kind):
    for name, p in theirs.named_parameters():       # weight_ih_l0, bias_hh_l1_reverse, ...
        what, side, rest = name.split("_", 2)        # ("weight", "ih", "l0_reverse")
        layer = rest.split("_")[0]
        prefix = layer + ("r" if rest.endswith("reverse") else "") + "."
        value = p.detach().double().numpy()
        if what == "weight":
            ours.params[prefix + ("W" if side == "ih" else "U")][...] = value
        elif kind == "gru":
            ours.params[prefix + ("b" if side == "ih" else "b_U")][...] = value
        elif side == "ih":                          # LSTM: one bias, the sum of torch's two
            ours.params[prefix + "b"][...] = value
        else:
            ours.params[prefix + "b"][...] += value


def torch_grad_of(ours_name, theirs, kind):
    layer, _, pname = ours_name.partition(".")
    suffix = "_" + layer[:-1] if layer.endswith("r") else "_" + layer
    suffix = suffix + "_reverse" if layer.endswith("r") else suffix
    grads = dict((n, p.grad.double().numpy()) for n, p in theirs.named_parameters())
    if pname == "W":
        return grads["weight_ih" + suffix]
    if pname == "U":
        return grads["weight_hh" + suffix]
    if pname == "b_U":
        return grads["bias_hh" + suffix]
    return grads["bias_ih" + suffix]                 # equals bias_hh's gradient for the LSTM


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_matches_torch(kind, num_layers, bidirectional):
    rng = make_rng(40)
    B, T, E, H = 4, 9, 3, 5
    lengths = np.array([9, 2, 6, 4])
    torch.manual_seed(0)
    if kind == "lstm":
        theirs = torch.nn.LSTM(E, H, num_layers, batch_first=True, bidirectional=bidirectional).double()
        ours = qlnumba.QLLSTM(E, H, num_layers, bidirectional, psug=False, hgr=False, dtype=np.float64)
    else:
        theirs = torch.nn.GRU(E, H, num_layers, batch_first=True, bidirectional=bidirectional).double()
        ours = qlnumba.GRU(E, H, num_layers, bidirectional, dtype=np.float64)
    copy_weights(ours, theirs, kind)
    x = rng.standard_normal((B, T, E))
    R = rng.standard_normal((B, T, H * ours.directions))
    Rh = rng.standard_normal((num_layers * ours.directions, B, H))

    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    out_p, hidden = theirs(packed)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=T)
    h_t = hidden[0] if kind == "lstm" else hidden
    loss = (out_t * torch.tensor(R)).sum() + (h_t * torch.tensor(Rh)).sum()
    loss.backward()

    out, final = ours.forward(x, lengths)
    dx, grads = ours.backward(R, {"h": Rh})
    assert_close(out, out_t.detach().numpy(), 1e-10, 1e-12, "out")
    assert_close(final["h"], h_t.detach().numpy(), 1e-10, 1e-12, "h_n")
    if kind == "lstm":
        assert_close(final["c"], hidden[1].detach().numpy(), 1e-10, 1e-12, "c_n")
    assert_close(dx, xt.grad.numpy(), 1e-9, 1e-11, "dx")
    for name in ours.params:
        assert_close(grads[name], torch_grad_of(name, theirs, kind), 1e-9, 1e-11, name)
