"""Small file writers the tests share."""

import io
import json
import tarfile


def write_json(path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    """A tar of the (member name, bytes) pairs, in order."""
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)
