"""SASS instructions per source line, from ``nvdisasm -c -gi`` of machine code built with line
information: what ``scripts/ptx_check.py --loops --lines FILE`` writes for the persistent loops,
to read (and compare) their machine code with no GPU at hand."""
import collections
import glob
import os
import re
import shutil
import subprocess


def nvdisasm_path():
    """nvdisasm on PATH, in the CUDA toolkit, or from the nvidia-cuda-nvdisasm wheel; or None."""
    found = shutil.which("nvdisasm") or "/usr/local/cuda/bin/nvdisasm"
    if os.path.exists(found):
        return found
    import numpy
    wheel = glob.glob(os.path.join(os.path.dirname(numpy.__file__), "..", "nvidia", "cu*", "bin", "nvdisasm"))
    return wheel[0] if wheel else None


def count_sass_lines(text):
    """SASS instructions per source line in ``nvdisasm -c -gi`` output: a Counter keyed by the
    innermost line and, for inlined device functions, "in" the kernel's line they were
    inlined at; and a Counter of the call sites of 64-bit integer division routines."""
    counts, where, chain = collections.Counter(), "(no line)", []
    for line in text.splitlines():
        if "//## File" in line:
            # one line per level of inlining, innermost first, the kernel's own line last
            chain.append(re.findall(r'"([^"]+)", line (\d+)', line)[0])
            continue
        if chain:
            inner, outer = (f"{os.path.basename(f)}:{n}" for f, n in (chain[0], chain[-1]))
            where = inner if inner == outer else f"{inner} in {outer}"
            chain = []
        if re.match(r"\s+/\*[0-9a-f]+\*/\s+\S", line) and "NOP" not in line:
            counts[where] += 1
    calls = collections.Counter(re.findall(r"CALL\S*\s+`\((__cuda_sm20_(?:div|rem)_[su]64)\)", text))
    return counts, calls


def sass_lines(obj, name, stats, out):
    """Write to ``out`` the SASS instructions of machine code ``obj`` (built with line
    information) per source line, largest first (``count_sass_lines``)."""
    exe = nvdisasm_path()
    if exe is None:
        raise SystemExit("--lines needs nvdisasm (pip install nvidia-cuda-nvdisasm)")
    text = subprocess.run([exe, "-c", "-gi", obj], capture_output=True, text=True, check=True).stdout
    counts, calls = count_sass_lines(text)
    out.write(f"== {name}: {stats}; {sum(counts.values())} SASS instructions; "
              f"64-bit division calls {dict(calls) or 'none'}\n")
    for where, n in counts.most_common():
        out.write(f"{n:6d}  {where}\n")
