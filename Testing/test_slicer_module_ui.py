"""Static checks of the Slicer module: the .ui file against the module code (no Qt needed).

Slicer's Qt parts are not installable outside the application, so the module source is read
with ``ast`` and the .ui file with an XML parser:
- every ``self.ui.<name>`` the code uses is a widget in the .ui file;
- every ``SlicerParameterName`` in the .ui file is a field of the parameter-node class, bound to a
  widget type Slicer's parameterNodeWrapper can connect to that field's type;
- the module file has the classes of Slicer's scripted-module template;
- the CMake lists and resources reference files that exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "MemorizationIndex"
MODULE_FILE = MODULE_DIR / "MemorizationIndex.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MemorizationIndex.ui"
PARAMETER_CLASS = "MemorizationIndexParameterNode"

# Widget classes parameterNodeWrapper connects to each kind of field (exact classes, as it checks).
CONNECTABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "enum": {"QComboBox"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}


@pytest.fixture(scope="module")
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


@pytest.fixture(scope="module")
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} is missing from {MODULE_FILE.name}")


def _enum_classes(tree: ast.Module) -> set[str]:
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(base) in ("enum.Enum", "Enum") for base in node.bases):
            found.add(node.name)
    return found


def _fields(tree: ast.Module) -> dict[str, str]:
    """Parameter-node fields -> kind (bool/int/float/str/path/enum/node)."""
    cls = _class(tree, PARAMETER_CLASS)
    enums = _enum_classes(tree)
    fields = {}
    for statement in cls.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        annotation = statement.annotation
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
            annotation = annotation.slice.elts[0]
        text = ast.unparse(annotation)
        if text in ("bool", "int", "float", "str"):
            kind = text
        elif text in ("pathlib.Path", "Path"):
            kind = "path"
        elif text in enums:
            kind = "enum"
        elif re.fullmatch(r"(slicer\.)?vtkMRML\w+Node", text):
            kind = "node"
        else:
            raise AssertionError(f"field {statement.target.id}: unexpected type {text}")
        fields[statement.target.id] = kind
    return fields


def _parameter_names(ui_widgets) -> dict[str, str]:
    """SlicerParameterName -> widget name."""
    names = {}
    for name, widget in ui_widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[prop.find("string").text] = name
    return names


def test_ui_file_is_a_slicer_module_panel(ui_widgets):
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    classes = {w.get("class") for w in ui_widgets.values()}
    assert {"ctkCollapsibleButton", "qMRMLNodeComboBox", "ctkPathLineEdit"} <= classes
    assert len(ui_widgets) == len(list(root.iter("widget"))), "widget names must be unique"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    custom = {c for c in classes if c.startswith(("ctk", "qMRML"))}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"


def test_every_widget_the_code_uses_exists(ui_widgets, module_tree):
    used = set()
    for node in ast.walk(module_tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if inner.attr == "ui" and isinstance(inner.value, ast.Name) and inner.value.id == "self":
                used.add(node.attr)
    assert used, "the widget code should use self.ui.<widget>"
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"widgets used in {MODULE_FILE.name} but absent from the .ui file: {missing}"


def test_every_parameter_name_is_a_field_with_a_connectable_widget(ui_widgets, module_tree):
    fields = _fields(module_tree)
    names = _parameter_names(ui_widgets)
    assert names, "the .ui file binds no widget to the parameter node"
    unknown = sorted(set(names) - set(fields))
    assert not unknown, f"SlicerParameterName values that are not fields of {PARAMETER_CLASS}: {unknown}"
    for parameter, widget_name in names.items():
        widget_class = ui_widgets[widget_name].get("class")
        assert widget_class in CONNECTABLE[fields[parameter]], (
            f"{widget_name} ({widget_class}) cannot be bound to {parameter} ({fields[parameter]})"
        )
    unbound = sorted(set(fields) - set(names))
    assert not unbound, f"parameter-node fields with no widget: {unbound}"


def test_slider_fields_are_bounded(ui_widgets, module_tree):
    names = _parameter_names(ui_widgets)
    cls = _class(module_tree, PARAMETER_CLASS)
    annotations = {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}
    for parameter, widget_name in names.items():
        if ui_widgets[widget_name].get("class") in ("ctkSliderWidget", "QSlider"):
            assert "WithinRange" in annotations[parameter], f"{parameter} is bound to a slider and needs WithinRange"


def test_module_follows_the_scripted_module_template(module_tree):
    expected_bases = {
        "MemorizationIndex": "ScriptedLoadableModule",
        "MemorizationIndexWidget": "ScriptedLoadableModuleWidget",
        "MemorizationIndexLogic": "ScriptedLoadableModuleLogic",
        "MemorizationIndexTest": "ScriptedLoadableModuleTest",
    }
    for name, base in expected_bases.items():
        cls = _class(module_tree, name)
        assert base in [ast.unparse(b) for b in cls.bases]
    assert "VTKObservationMixin" in [ast.unparse(b) for b in _class(module_tree, "MemorizationIndexWidget").bases]
    parameter_class = _class(module_tree, PARAMETER_CLASS)
    assert "parameterNodeWrapper" in [ast.unparse(d) for d in parameter_class.decorator_list]
    logic = _class(module_tree, "MemorizationIndexLogic")
    methods = {f.name: f for f in logic.body if isinstance(f, ast.FunctionDef)}
    assert {"process", "startAudit", "startBuildIndex", "cancel", "ensureDependencies", "getParameterNode"} <= set(
        methods
    )
    process_args = [a.arg for a in methods["process"].args.args]
    assert process_args[:3] == ["self", "volumeNode", "indexDir"]


def test_dependencies_are_not_installed_at_import_time(module_tree):
    """No pip/PyTorch installs in module-level code or constructors; the Apply button installs (after asking)."""
    for node in module_tree.body:
        if isinstance(node, (ast.Expr, ast.Assign)):
            assert "pip" not in ast.unparse(node)
    for cls_name in ("MemorizationIndex", "MemorizationIndexWidget", "MemorizationIndexLogic"):
        for f in _class(module_tree, cls_name).body:
            if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "setup"):
                text = ast.unparse(f)
                assert "pip_" not in text and "installTorch" not in text and "ensureDependencies" not in text
    widget = {
        f.name: ast.unparse(f)
        for f in _class(module_tree, "MemorizationIndexWidget").body
        if isinstance(f, ast.FunctionDef)
    }
    assert "ensureDependencies" in widget["onApplyButton"]
    handler = (MODULE_DIR / "MemorizationIndexLib" / "dependencies.py").read_text(encoding="utf-8")
    assert "PyTorchUtils" in handler and "pip_ensure" in handler and "prompt_install=" in handler
    assert "skip_packages" not in handler and "pydeps" not in handler
    requirements = (MODULE_DIR / "Resources" / "requirements.txt").read_text(encoding="utf-8")
    assert not re.search(r"^\s*torch\b", requirements, re.M), (
        "torch comes from the PyTorch extension, not requirements.txt"
    )


def test_module_file_keeps_the_template_order(module_tree):
    """Module class, parameter node, widget, logic, test; the rest lives in MemorizationIndexLib."""
    order = [
        "MemorizationIndex",
        PARAMETER_CLASS,
        "MemorizationIndexWidget",
        "MemorizationIndexLogic",
        "MemorizationIndexTest",
    ]
    classes = [node.name for node in module_tree.body if isinstance(node, ast.ClassDef)]
    assert [name for name in classes if name in order] == order
    assert not set(classes) - set(order) - _enum_classes(module_tree), "helper classes belong in MemorizationIndexLib"


@pytest.mark.parametrize("source", [MODULE_FILE, MODULE_DIR / "Testing" / "Python" / "MemorizationIndexModuleTest.py"])
def test_every_library_name_the_slicer_files_use_exists(source):
    """The module file and its in-Slicer self-test run only inside the application: every name they import from the
    library (``from MemorizationIndexLib.x import y``, and ``m.y`` of a library module imported whole) must exist, so
    that moving or renaming a library function cannot break them unseen."""
    tree = ast.parse(source.read_text())
    whole: dict[str, str] = {}  # local name -> library module imported whole
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "MemorizationIndexLib":
            module = importlib.import_module(node.module)
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if hasattr(module, "__path__") and importlib.util.find_spec(submodule) is not None:
                    whole[alias.asname or alias.name] = submodule
                else:
                    assert hasattr(module, alias.name), f"{source.name}: {node.module} has no {alias.name}"
                    checked += 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in whole:
            module = importlib.import_module(whole[node.value.id])
            assert hasattr(module, node.attr), f"{source.name}: {whole[node.value.id]} has no {node.attr}"
            checked += 1
    assert checked > 0, f"{source.name} uses no library name: the check read the wrong file"


def test_cmake_lists_reference_existing_files():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "MemorizationIndex")
    assert "slicerMacroBuildScriptedModule" in cmake and "WITH_GENERIC_TESTS" in cmake
    listed = re.findall(r"\b([\w/]+\.(?:py|ui|png|txt))\b", cmake)
    assert "MemorizationIndex.py" in listed
    for relative in listed:
        assert (MODULE_DIR / relative).exists() or relative == "CMakeLists.txt", f"{relative} is listed but missing"
    library_files = sorted(
        p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "MemorizationIndexLib").rglob("*.py")
    )
    assert "MemorizationIndexLib/mrml.py" in listed
    assert all(f in listed for f in library_files if f.endswith(("mrml.py", "__init__.py"))), library_files
    top = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in (
        "project(MemorizationIndex)",
        "EXTENSION_DEPENDS",
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(MemorizationIndex)",
    ):
        assert needle in top


def test_every_library_file_is_listed_in_cmake():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "MemorizationIndex")
    library = MODULE_DIR / "MemorizationIndexLib"
    for path in sorted(library.rglob("*.py")):
        relative = path.relative_to(MODULE_DIR).as_posix()
        assert relative in cmake, f"{relative} is not listed in MODULE_PYTHON_SCRIPTS; Slicer would not install it"


def _enum_values(tree: ast.Module, name: str) -> list[str]:
    """The string values of an enum class's members, in order."""
    return [
        statement.value.value
        for statement in _class(tree, name).body
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
    ]


def _field_default(tree: ast.Module, name: str):
    """The literal default of a parameter-node field."""
    for statement in _class(tree, PARAMETER_CLASS).body:
        if isinstance(statement, ast.AnnAssign) and getattr(statement.target, "id", None) == name:
            return ast.literal_eval(statement.value)
    raise AssertionError(f"{PARAMETER_CLASS} has no field {name}")


def test_the_panel_offers_the_encoders_axes_and_alpha_the_library_knows(module_tree):
    from MemorizationIndexLib.encoders import ENCODER_NAMES
    from MemorizationIndexLib.scoring import DEFAULT_ALPHA
    from MemorizationIndexLib.volumes import AXIS_CHOICES

    assert tuple(_enum_values(module_tree, "EncoderChoice")) == ENCODER_NAMES
    assert tuple(_enum_values(module_tree, "AxisChoice")) == AXIS_CHOICES
    assert _field_default(module_tree, "alpha") == DEFAULT_ALPHA
