"""The manifest's contract, written down: each scoring kind's typed section (checked by the runtime
on load) and the JSON Schema generated from them and shipped with the package. Every bundle the
suite exports is also validated against the shipped schema (``conftest.written_manifests_meet_the_schema``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import pytest

from adx_runtime.bundle import integrity_section, read_manifest
from adx_runtime.bundle.schema import manifest_schema, schema_text
from adx_runtime.errors import BundleError
from adx_runtime.kinds import SECTIONS, GallerySection, KnnSection, MapSection, parse_scoring
from adx_runtime.kinds.check import check, check_declaration

FIXTURES = Path(__file__).parent / "fixtures"


def _shipped() -> str:
    return resources.files("adx_runtime.bundle").joinpath("manifest.schema.json").read_text()


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(_shipped())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_shipped_schema_is_the_generated_one() -> None:
    """Regenerate with ``python -m adx_runtime.bundle.schema > deploy/adx_runtime/bundle/manifest.schema.json``."""
    assert _shipped() == schema_text()


def test_every_kind_declares_only_rules_the_runtime_enforces() -> None:
    schema = manifest_schema()
    assert schema["properties"]["scoring"]["properties"]["kind"]["enum"] == list(SECTIONS)
    for kind, section in SECTIONS.items():
        check_declaration(section.schema(), kind)  # a keyword the runtime's check skips would be a silent promise
        assert section.schema()["properties"]["kind"] == {"enum": [kind]}
    with pytest.raises(TypeError, match="not checked"):
        check_declaration({"type": "object", "properties": {"a": {"pattern": "x"}}})


@pytest.mark.parametrize("fixture", ["bundle", "npz_bundle", "padim_bundle"])
def test_written_bundles_meet_the_schema_and_round_trip_their_section(fixture: str,
                                                                     request: pytest.FixtureRequest) -> None:
    m = _manifest(request.getfixturevalue(fixture))
    errors = list(_validator().iter_errors(m))
    assert errors == []
    section = parse_scoring(m["scoring"], m["method"])
    assert section.to_dict() == m["scoring"]  # the typed section keeps the method's descriptive fields


def test_typed_sections_read_what_the_scorers_read(bundle: Path, npz_bundle: Path) -> None:
    knn = parse_scoring(_manifest(bundle)["scoring"])
    assert isinstance(knn, KnnSection) and knn.searching
    assert knn.feature_output == "patch_features" and knn.num_neighbors >= 1 and knn.bank["format"] == "faiss"
    assert knn.describe() == "Flat" and knn.describe({"nprobe": 4}) == "Flat nprobe=4"
    assert parse_scoring(_manifest(npz_bundle)["scoring"]).describe() == "numpy-exact"
    old = GallerySection.from_dict({"kind": "gallery", "image_output": "i", "map_output": "m", "k": 3,
                                    "gallery": {"images_file": "g.faiss", "maps_file": "m.npz", "dtype": "float16"}})
    assert old.images_bank == {"file": "g.faiss", "format": "faiss"} and old.k_pixel == 3
    assert old.describe() == "float16"
    assert MapSection.build(map_output="anomaly_map").image_output is None and not MapSection.searching


@pytest.mark.parametrize("kind", ["patchcore", "padim", "spade"])
def test_schema1_fixtures_upgrade_to_sections_the_kinds_accept(kind: str) -> None:
    """Schema 1 is its own, documented case (read in 0.1.0's exact form, upgraded in memory); the
    upgraded scoring section is what the kinds check."""
    m = read_manifest(FIXTURES / f"schema1_{kind}" / "bundle")
    assert parse_scoring(m["scoring"]).kind == m["scoring"]["kind"]


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    # name: (edit, field the runtime names, json path jsonschema names)
    "no bank file": (lambda m: m["scoring"]["bank"].pop("file"), "scoring.bank needs one of file or shards",
                     "$.scoring.bank"),
    "zero neighbours": (lambda m: m["scoring"].__setitem__("num_neighbors", 0),
                        "scoring.num_neighbors must be an integer >= 1, got 0", "$.scoring.num_neighbors"),
    "bank format": (lambda m: m["scoring"]["bank"].__setitem__("format", "parquet"),
                    "scoring.bank.format must be one of 'faiss', 'npz', got 'parquet'", "$.scoring.bank.format"),
    "no num_neighbors": (lambda m: m["scoring"].pop("num_neighbors"), "scoring lacks 'num_neighbors'", "$.scoring"),
    "search param text": (lambda m: m["scoring"]["bank"].__setitem__("search_params", {"nprobe": "8"}),
                          "scoring.bank.search_params.nprobe must be a number, got '8'",
                          "$.scoring.bank.search_params.nprobe"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_hand_broken_scoring_section_fails_schema_and_runtime_readably(bundle_copy: Path, name: str) -> None:
    edit, runtime_says, json_path = BROKEN[name]
    m = _manifest(bundle_copy)
    edit(m)
    error = pytest.importorskip("jsonschema").exceptions.best_match(_validator().iter_errors(m))
    assert error is not None and error.json_path == json_path and "\n" not in error.message
    m["integrity"] = integrity_section(m)  # resealed, as an exporter would: only the section's values are wrong
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=runtime_says.replace(".", "[.]").replace("(", r"\(")) as info:
        read_manifest(bundle_copy)
    assert "\n" not in str(info.value) and "re-export the bundle" in str(info.value)


def test_a_hand_broken_manifest_outside_scoring_fails_the_schema(bundle: Path) -> None:
    m = _manifest(bundle)
    m["calibration"]["image"]["scale"] = -1
    del m["files"][0]["sha256"]
    messages = {e.json_path: e.message for e in _validator().iter_errors(m)}
    assert messages["$.calibration.image.scale"] == "-1 is less than or equal to the minimum of 0"
    assert messages["$.files[0]"] == "'sha256' is a required property"


def test_unknown_kind_says_to_upgrade() -> None:
    with pytest.raises(BundleError, match=r"scoring kind 'hologram' \(method 'x'\) is not known to this runtime; "
                                          r"known: knn, gallery, gaussian, map"):
        parse_scoring({"kind": "hologram"}, "x")


def test_the_runtime_check_names_nested_fields() -> None:
    schema = GallerySection.schema()
    with pytest.raises(BundleError, match=r"^manifest scoring\.gallery needs one of images_bank\+maps_file or "):
        check({"kind": "gallery", "image_output": "i", "map_output": "m", "k": 1, "gallery": {}}, schema, "scoring")
    with pytest.raises(BundleError, match=r"scoring\.gallery\.pixel_bank\.shards\[0\] lacks 'offset'"):
        check({"kind": "gallery", "image_output": "i", "map_output": "m", "k": 1,
               "gallery": {"images_bank": {"format": "faiss", "file": "a"},
                           "pixel_bank": {"format": "faiss", "shards": [{"file": "b", "size": 2}]}}},
              schema, "scoring")
