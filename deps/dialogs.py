"""The Install dependencies and Diagnostics dialogs, and the ``soilssl:`` links that open them.

The installer runs the plan of ``installer.make_plan`` one step at a time in a ``QProcess``
(QGIS stays responsive), reads pip's output for the progress bar, and Cancel kills pip and
removes the half-built folder.
"""
import importlib
import shlex

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import (QObject, QProcess, QProcessEnvironment, Qt, QUrl, pyqtSignal,
                              pyqtSlot)
from qgis.PyQt.QtGui import QDesktopServices, QFont, QFontDatabase, QFontInfo, QGuiApplication
from qgis.PyQt.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QHBoxLayout, QLabel,
                                 QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout)

from . import diagnostics, installer, paths, torch_build

TAG = "SoilSSL"
SCHEME = "soilssl"
REQUIRED = "torch, timm, rasterio and scikit-learn"


def monospace():
    """A fixed-pitch font (the system's; offscreen Qt may answer a proportional one)."""
    font = QFontDatabase.systemFont(QFontDatabase.FixedFont)
    if not QFontInfo(font).fixedPitch():
        font = QFont("Monospace")
        font.setStyleHint(QFont.TypeWriter)
    return font


def log(message, level=Qgis.Info):
    QgsMessageLog.logMessage(message, TAG, level)


class InstallDialog(QDialog):
    """Install torch (CPU or CUDA build), timm, rasterio and scikit-learn into SoilSSL's folder.

    ``options`` go to ``installer.make_plan`` (tests give a local index and tiny packages).
    ``installed`` is emitted with the manifest when the packages are in place and importable.
    """
    installed = pyqtSignal(dict)

    def __init__(self, parent=None, missing=None, build=None, options=None):
        super().__init__(parent)
        self.setWindowTitle("SoilSSL — Install dependencies")
        self.options = dict(options or {})
        self.state = "ready"          # running, done, failed, cancelled
        self.plan = self.process = self.parser = None
        self.step_index = 0
        self._buffer = ""
        root = self.options.get("root") or paths.deps_root()
        self.final = paths.env_dir(root)
        detected = build or torch_build.detect()

        layout = QVBoxLayout(self)
        missing_text = (f"Missing now: <b>{', '.join(missing)}</b>." if missing else
                        "All are installed; installing again replaces SoilSSL's copy.")
        self.intro = QLabel(
            f"SoilSSL needs {REQUIRED} in QGIS's Python. {missing_text}<br>"
            f"They are installed into a folder of SoilSSL's own in your QGIS profile, "
            f"<tt>{self.final}</tt>; QGIS's own Python packages are not changed. "
            f"Torch downloads 200 MB (CPU) to 3 GB (CUDA): this takes a few minutes.")
        self.intro.setWordWrap(True)
        self.intro.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.intro)

        row = QHBoxLayout()
        row.addWidget(QLabel("Torch build:"))
        self.build_box = QComboBox()
        self.builds = [detected]
        self.build_box.addItem(f"{detected.label} (detected)")
        for tag, _ in reversed(torch_build.CUDA_BUILDS):
            if tag != detected.tag:
                self.builds.append(torch_build.TorchBuild(
                    tag, torch_build.PYTORCH_INDEX + tag, "chosen by hand"))
                self.build_box.addItem(self.builds[-1].label)
        if detected.tag != "cpu":
            self.builds.append(torch_build.TorchBuild("cpu", torch_build.PYTORCH_INDEX + "cpu",
                                                      "chosen by hand"))
            self.build_box.addItem("CPU build")
        row.addWidget(self.build_box, 1)
        layout.addLayout(row)
        self.detected = QLabel(f"Detected: {detected.reason}")
        self.detected.setWordWrap(True)
        layout.addWidget(self.detected)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        layout.addWidget(self.progress)
        self.status = QLabel("Press Install to start.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFont(monospace())
        self.details.setMaximumBlockCount(5000)
        self.details.setMinimumHeight(140)
        layout.addWidget(self.details, 1)

        self.buttons = QDialogButtonBox()
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.Cancel)
        self.close_button = self.buttons.addButton(QDialogButtonBox.Close)
        self.cancel_button.setEnabled(False)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        layout.addWidget(self.buttons)
        self.resize(680, 460)

    # -- running ------------------------------------------------------------
    def start(self):
        if self.state == "running":
            return
        build = self.builds[self.build_box.currentIndex()]
        self.details.clear()
        self.progress.setValue(0)
        try:
            root = self.options.get("root") or paths.deps_root()
            for leftover in installer.cleanup(root):
                self._log(f"Removed what an interrupted install left: {leftover}")
            self.plan = installer.make_plan(build, **self.options)
        except (installer.DepsError, OSError) as exc:
            return self._fail(str(exc))
        self._log(self.plan.describe())
        self.state = "running"
        self.step_index = 0
        self.install_button.setEnabled(False)
        self.build_box.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._next_step()

    def _next_step(self):
        if self.step_index >= len(self.plan.steps):
            return self._finish()
        step = self.plan.steps[self.step_index]
        try:
            argv = step.command()
        except installer.DepsError as exc:
            return self._fail(str(exc))
        self.parser = installer.PipProgress(step.expected_mb)
        self._buffer = ""
        self.status.setText(step.title + "…")
        self._log("$ " + " ".join(shlex.quote(a) for a in argv))
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        env = QProcessEnvironment()
        for key, value in installer.child_env().items():
            env.insert(key, value)
        self.process.setProcessEnvironment(env)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._step_done)
        self.process.errorOccurred.connect(self._process_error)
        self.process.start(argv[0], argv[1:])

    def _read(self):
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._buffer = self._buffer.replace("\r", "\n").split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line):
        self.parser.feed(line)
        if not line.startswith("Progress "):  # raw progress lines only move the bar
            self._log(line)
        if self.parser.status:
            self.status.setText(f"{self.plan.steps[self.step_index].title}: "
                                f"{self.parser.status}")
        done = sum(s.weight for s in self.plan.steps[:self.step_index])
        total = sum(s.weight for s in self.plan.steps)
        step = self.plan.steps[self.step_index]
        self.progress.setValue(int(1000 * (done + step.weight * self.parser.fraction) / total))

    def _process_error(self, error):
        if error == QProcess.FailedToStart and self.state == "running":
            self._fail(f"Could not start {self.process.program()}: "
                       f"{self.process.errorString()}")

    def _step_done(self, code, status):
        if self.state != "running":
            return
        self._read()
        if self._buffer:
            self._line(self._buffer)
            self._buffer = ""
        if status != QProcess.NormalExit or code != 0:
            step = self.plan.steps[self.step_index]
            errors = " ".join(self.parser.errors[-2:]) if self.parser else ""
            return self._fail(f"{step.title} failed (exit code {code}). {errors}".strip())
        self.step_index += 1
        self._next_step()

    def _finish(self):
        try:
            manifest = self.plan.finish()
        except OSError as exc:
            return self._fail(f"Could not move the packages into place: {exc}")
        folder, message = paths.activate(self.plan.final)
        importlib.invalidate_caches()
        log(message)
        self.state = "done"
        self.progress.setValue(1000)
        versions = manifest["installed"]
        names = [f"{k} {versions[k]}" for k in versions
                 if k.lower() in ("torch", "timm", "rasterio", "scikit_learn", "scikit-learn")]
        text = (f"Done: {', '.join(names) or 'the packages'} installed in {self.plan.final}. "
                "The SoilSSL algorithms can run now.")
        early = paths.imported_elsewhere(folder) if folder else []
        if early:
            text += (f" Restart QGIS before running them: {', '.join(early)} had already been "
                     "loaded from elsewhere.")
        self.status.setText(text)
        self._log(text)
        log(text)
        self._idle()
        self.installed.emit(manifest)

    def _fail(self, message):
        self._stop_process()
        self.state = "failed"
        if self.plan is not None:
            self.plan.discard()
        text = f"Not installed: {message} Nothing was changed; the details are below."
        self.status.setText(text)
        self._log(text)
        log(text, Qgis.Warning)
        self._idle()

    def cancel(self):
        if self.state != "running":
            return
        self.state = "cancelled"
        self._stop_process()
        removed = self.plan.discard()
        text = "Cancelled: nothing was installed." + ("" if removed else
                                                       f" Could not remove {self.plan.tmp}.")
        self.status.setText(text)
        self._log(text)
        log(text)
        self._idle()

    def _stop_process(self):
        proc, self.process = self.process, None
        if proc is not None and proc.state() != QProcess.NotRunning:
            proc.kill()
            proc.waitForFinished(10000)

    def _idle(self):
        self.install_button.setEnabled(True)
        self.install_button.setText("Install again" if self.state == "done" else "Install")
        self.build_box.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _log(self, text):
        self.details.appendPlainText(text)
        bar = self.details.verticalScrollBar()
        bar.setValue(bar.maximum())  # follow pip's latest line

    def reject(self):  # Esc / the window's close button: cancel a running install first
        self.cancel()
        super().reject()

    def closeEvent(self, event):  # noqa: N802
        self.cancel()
        super().closeEvent(event)


class DiagnosticsDialog(QDialog):
    """The diagnostics text, selectable, with a Copy button."""

    def __init__(self, text, parent=None):
        super().__init__(parent)
        self.setWindowTitle("SoilSSL — Diagnostics")
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit(text)
        self.text.setReadOnly(True)
        self.text.setLineWrapMode(QPlainTextEdit.NoWrap)
        self.text.setFont(monospace())
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.copy_button = QPushButton("Copy to clipboard")
        buttons.addButton(self.copy_button, QDialogButtonBox.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(820, 480)

    def copy(self):
        QGuiApplication.clipboard().setText(self.text.toPlainText())


def diagnostics_text():
    text = diagnostics.report(Qgis.QGIS_VERSION)
    log(text)
    return text


class Links(QObject):
    """Opens the dialogs from ``soilssl:install-dependencies`` / ``soilssl:diagnostics`` links
    (the algorithm dialogs' warning bar and the 'cannot be run' message show such a link)."""

    def __init__(self, actions, parent=None):
        super().__init__(parent)
        self.actions = actions  # {"install-dependencies": callable, "diagnostics": callable}
        QDesktopServices.setUrlHandler(SCHEME, self, "open")

    @pyqtSlot(QUrl)
    def open(self, url):
        action = self.actions.get(url.path().strip("/"))
        if action is not None:
            action()

    def remove(self):
        QDesktopServices.unsetUrlHandler(SCHEME)

