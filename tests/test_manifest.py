"""The npe2 manifest validates and every contribution it names imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import npe2

NPE2 = Path(sys.executable).with_name("npe2")


def test_npe2_validate_passes_with_imports():
    result = subprocess.run(
        [str(NPE2), "validate", "napari-unet", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_contributions():
    manifest = npe2.PluginManifest.from_distribution("napari-unet")
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"Train", "Segment", "Evaluate"}
    assert {s.key for s in contributions.sample_data} == {"nuclei", "tissue", "dsb2018"}
    assert contributions.readers[0].accepts_directories
    assert {w.command for w in contributions.writers} == {
        "napari-unet.write_labels",
        "napari-unet.write_training_folder",
    }
    assert "napari/layers/segment" in contributions.menus
    for command in contributions.commands:
        plugin, _, verb_noun = command.id.partition(".")
        assert plugin == "napari-unet" and "_" in verb_noun


def test_readme_and_docs_name_the_menus_as_napari_shows_them():
    """napari titles the plugin's menus with the manifest's display name."""
    manifest = npe2.PluginManifest.from_distribution("napari-unet")
    name = manifest.display_name
    assert name == "napari U-Net"
    root = Path(__file__).parents[1]
    for document in ("README.md", "docs/napari_plugin.md"):
        text = (root / document).read_text(encoding="utf-8")
        assert f"Plugins > {name}" in text, document
        assert f"Open Sample > {name}" in text, document
        assert "Plugins > napari-unet" not in text and "Open Sample > napari-unet" not in text
