"""The structure the README promises: every module is in its table, and imports flow one way, down it."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def table_order() -> list[str]:
    """The modules of the README's table "The modules, in import order", top to bottom."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The modules, in import order", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)\.py` \|", section, re.M)


def first_party_imports(module: str, names: set[str]) -> set[str]:
    """The project's modules that `module` imports anywhere in its code (top level or in a function)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & names


def test_every_module_is_in_the_readme_table_once():
    order = table_order()
    on_disk = sorted(p.stem for p in ROOT.glob("*.py"))
    assert sorted(order) == on_disk, "README's module table and the modules on disk differ"


def test_imports_flow_one_way_down_the_readme_table():
    order = table_order()
    position = {m: i for i, m in enumerate(order)}
    upward = [f"{m} imports {imported}" for m in order
              for imported in sorted(first_party_imports(m, set(order)))
              if position[imported] >= position[m]]
    assert not upward, upward
