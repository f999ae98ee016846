"""Where the data sets live, and the error for data that is missing or malformed."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(ValueError):
    """Data missing or malformed; the message says what to do."""


def default_data_dir(folder, env_var):
    """``$env_var``, else ``$QLNUMBA_DATA_DIR/folder``, else ``../shared/data/folder``
    beside the repository checkout."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if os.environ.get("QLNUMBA_DATA_DIR"):
        return Path(os.environ["QLNUMBA_DATA_DIR"]) / folder
    return REPO_ROOT.parent / "shared" / "data" / folder
