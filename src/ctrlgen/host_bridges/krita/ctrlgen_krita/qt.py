"""One import point for Qt: PyQt5 in Krita 5, PyQt6 in Krita 6.

The rest of the plugin writes enums fully scoped (``Qt.AlignmentFlag.AlignTop``), which both
bindings accept, and imports widgets from here only.
"""

from __future__ import annotations

import sys


def _binding() -> str:
    # Krita's own `krita` module has already loaded the binding it was built with; loading the
    # other one too would put two Qt versions in one process.
    for name in ("PyQt6", "PyQt5"):
        if name + ".QtCore" in sys.modules:
            return name
    try:
        import PyQt5.QtCore  # noqa: F401

        return "PyQt5"
    except ImportError:
        return "PyQt6"


QT_API = _binding()
if QT_API == "PyQt6":
    from PyQt6 import QtCore, QtGui, QtWidgets
else:
    from PyQt5 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]

Qt = QtCore.Qt
QTimer = QtCore.QTimer
pyqtSignal = QtCore.pyqtSignal

QWidget = QtWidgets.QWidget
QLabel = QtWidgets.QLabel
QLineEdit = QtWidgets.QLineEdit
QPlainTextEdit = QtWidgets.QPlainTextEdit
QPushButton = QtWidgets.QPushButton
QToolButton = QtWidgets.QToolButton
QComboBox = QtWidgets.QComboBox
QSpinBox = QtWidgets.QSpinBox
QDoubleSpinBox = QtWidgets.QDoubleSpinBox
QCheckBox = QtWidgets.QCheckBox
QProgressBar = QtWidgets.QProgressBar
QListWidget = QtWidgets.QListWidget
QListWidgetItem = QtWidgets.QListWidgetItem
QGroupBox = QtWidgets.QGroupBox
QVBoxLayout = QtWidgets.QVBoxLayout
QHBoxLayout = QtWidgets.QHBoxLayout
QFormLayout = QtWidgets.QFormLayout
QGridLayout = QtWidgets.QGridLayout
QScrollArea = QtWidgets.QScrollArea
QFrame = QtWidgets.QFrame
QApplication = QtWidgets.QApplication
QDialog = QtWidgets.QDialog
QDialogButtonBox = QtWidgets.QDialogButtonBox
QStackedWidget = QtWidgets.QStackedWidget
QSizePolicy = QtWidgets.QSizePolicy
QListView = QtWidgets.QListView
QFileDialog = QtWidgets.QFileDialog

if QT_API == "PyQt6":
    from PyQt6.QtGui import QAction  # QAction moved to QtGui in Qt 6
else:
    from PyQt5.QtWidgets import QAction  # type: ignore[no-redef]

__all__ = [
    "QT_API", "QtCore", "QtGui", "QtWidgets", "Qt", "QTimer", "pyqtSignal", "QAction", "QWidget", "QLabel",
    "QLineEdit", "QPlainTextEdit", "QPushButton", "QToolButton", "QComboBox", "QSpinBox", "QDoubleSpinBox",
    "QCheckBox", "QProgressBar", "QListWidget", "QListWidgetItem", "QGroupBox", "QVBoxLayout", "QHBoxLayout",
    "QFormLayout", "QGridLayout", "QScrollArea", "QFrame", "QApplication", "QDialog", "QDialogButtonBox",
    "QStackedWidget", "QSizePolicy", "QListView", "QFileDialog",
]
