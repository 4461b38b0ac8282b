"""The tests of the suite that need PyTorch or transformers, for .ci/run: ``list`` prints their node
ids (every test function of parity_tests/tests that imports torch or transformers or importorskips
either, in its body, through a helper or fixture of its file or conftest.py that does, or in a file
that does so at the top); ``check-skips JUNIT_XML`` fails when one of them still skipped for want
of torch or transformers."""

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

OPTIONAL = ("torch", "transformers")  # the torch and hf extras, which the test extra leaves out


def needs_an_extra(node):
    """Whether ``node`` imports or importorskips one of the ``OPTIONAL`` packages."""
    for n in ast.walk(node):
        if isinstance(n, ast.Import) and any(a.name.split(".")[0] in OPTIONAL for a in n.names):
            return True
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in OPTIONAL:
            return True
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "importorskip"
                and n.args and isinstance(n.args[0], ast.Constant) and str(n.args[0].value).split(".")[0] in OPTIONAL):
            return True
    return False


def functions(tree):  # {"test_x": def, "TestY::test_z": def}
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}::{m.name}": m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))})
    return found


def list_tests():
    tests = Path("parity_tests/tests")
    fixtures = {name for name, f in functions(ast.parse((tests / "conftest.py").read_text())).items() if needs_an_extra(f)}
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        defs = functions(tree)
        whole_file = any(needs_an_extra(n) for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
        extra_names = fixtures | {name.split("::")[-1] for name, f in defs.items() if needs_an_extra(f)}
        grew = True
        while grew:  # a function that calls one of them, or takes one as a fixture, needs the extra too
            grew = False
            for name, f in defs.items():
                used = {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
                used |= {a.arg for a in f.args.posonlyargs + f.args.args + f.args.kwonlyargs}
                if name.split("::")[-1] not in extra_names and used & extra_names:
                    extra_names.add(name.split("::")[-1])
                    grew = True
        for name in defs:
            if name.split("::")[-1].startswith("test") and (whole_file or name.split("::")[-1] in extra_names):
                print(f"{path}::{name}")


def check_skips(path):
    skipped = [f"{case.get('classname')}::{case.get('name')}: {skip.get('message')}"
               for case in ET.parse(path).iter("testcase") for skip in case.iter("skipped")
               if any(name in (skip.get("message") or "").lower() for name in OPTIONAL)]
    for line in skipped:
        print(f"CI: skipped for want of torch or transformers: {line}", file=sys.stderr)
    return 1 if skipped else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["list"]:
        list_tests()
    elif sys.argv[1:2] == ["check-skips"] and len(sys.argv) == 3:
        sys.exit(check_skips(sys.argv[2]))
    else:
        sys.exit("usage: torch_tests.py list | check-skips JUNIT_XML")
