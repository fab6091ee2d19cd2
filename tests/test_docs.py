"""The documentation: the API reference lists every public name and builds with Sphinx, warnings as errors
(the build that CI runs: ``sphinx-build -W -b html docs OUT``)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import itclust_hub as ih

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_reference_lists_every_public_name():
    listed = re.findall(r"^   (\w+)$", (DOCS / "api.rst").read_text(), flags=re.MULTILINE)
    assert sorted(listed) == sorted(set(ih.__all__) - {"__version__"})


def test_docs_build_with_warnings_as_errors(tmp_path):
    source = tmp_path / "docs"  # a copy: autosummary writes its pages next to the sources
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("generated", "_build"))
    build = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
                            str(tmp_path / "doctrees"), str(source), str(tmp_path / "html")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    api = (tmp_path / "html" / "generated" / "itclust_hub.ItClust.html").read_text()
    assert 'id="itclust_hub.ItClust.transfer"' in api and "Parameters" in api
