"""Keep a cluster's connection files private: the directory 0700, every file 0600.

The connection files hold the key that signs every message of the cluster (HMAC-SHA256);
anyone who can read them can run code on the ranks.
"""

from __future__ import annotations

import contextlib
import os
import stat


def restrict_files(profile_dir: str) -> None:
    """Make ``profile_dir/security`` readable by this user only."""
    security = os.path.join(profile_dir, "security")
    if not os.path.isdir(security):
        return
    os.chmod(security, stat.S_IRWXU)
    for entry in os.scandir(security):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):  # removed meanwhile
                os.chmod(entry.path, stat.S_IRUSR | stat.S_IWUSR)
