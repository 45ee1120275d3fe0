"""Pure-Python reference implementations (RTP, RTCP, sequence numbers) and the
annotated-hex vector loader used by the parser tests. Test-only: never imported by sfu/.

Vector file format (tests/vectors/*.hex):

    ## <name> ok|error          starts a vector (name is the pytest id)
    80 60 12 34   # V=2 ...     hex bytes; everything after '#' is a comment
    = <path> <expression>       an expected field of the parse result; path is
                                dot-separated keys, ints index lists (e.g. 0.reports.1.ssrc);
                                the expression is a literal, optionally with range/list/bytes/
                                rtcp.twcc_packets,
                                + and <<
"""

from dataclasses import dataclass, field
from pathlib import Path

from .rtcp import twcc_packets

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors"


@dataclass
class Vector:
    name: str
    valid: bool
    data: bytes
    expect: list[tuple[str, object]] = field(default_factory=list)


_EXPR_NAMES = {"range": range, "list": list, "bytes": bytes, "twcc_packets": twcc_packets}


def _expr(text: str) -> object:
    # Vector files are our own test data; a tiny namespace keeps expectations readable
    # (``list(range(1, 16))``, ``0x3ffff << 19``) without a parser of our own.
    return eval(text, {"__builtins__": {}}, _EXPR_NAMES)  # noqa: S307


def load_vectors(filename: str) -> list[Vector]:
    """Read one annotated hex file from tests/vectors/."""
    vectors: list[Vector] = []
    hexbuf: list[str] = []
    cur: Vector | None = None

    def finish() -> None:
        if cur is not None:
            cur.data = bytes.fromhex("".join(hexbuf))
            vectors.append(cur)

    for lineno, raw in enumerate((VECTOR_DIR / filename).read_text().splitlines(), 1):
        line = raw.strip()
        if line.startswith("##"):
            finish()
            hexbuf = []
            name, kind = line[2:].split()
            if kind not in ("ok", "error"):
                raise ValueError(f"{filename}:{lineno}: kind must be ok or error")
            cur = Vector(name, kind == "ok", b"")
        elif line.startswith("="):
            if cur is None:
                raise ValueError(f"{filename}:{lineno}: expectation outside a vector")
            path, literal = line[1:].strip().split(None, 1)
            cur.expect.append((path, _expr(literal.split("  #")[0].strip())))
        else:
            hexpart = line.split("#", 1)[0].strip()
            if hexpart:
                if cur is None:
                    raise ValueError(f"{filename}:{lineno}: bytes outside a vector")
                hexbuf.append(hexpart.replace(" ", ""))
    finish()
    names = [v.name for v in vectors]
    if len(names) != len(set(names)):
        raise ValueError(f"{filename}: duplicate vector names")
    return vectors


def lookup(value: object, path: str) -> object:
    """Follow a dot path (``0.reports.1.ssrc``) into nested lists/dicts."""
    for part in path.split("."):
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[int(part)] if part.isdigit() and int(part) in value else value[part]
        else:
            raise KeyError(path)
    return value


def load_crashers() -> list[tuple[str, bytes]]:
    """Inputs that once crashed a parser (tests/vectors/crashers/*.hex), kept forever."""
    out = []
    for p in sorted((VECTOR_DIR / "crashers").glob("*.hex")):
        text = "".join(line.split("#", 1)[0] for line in p.read_text().splitlines())
        out.append((p.stem, bytes.fromhex(text.replace(" ", ""))))
    return out
