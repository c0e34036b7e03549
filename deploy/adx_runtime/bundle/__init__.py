"""The bundle on disk: a folder with ``manifest.json``, ``model.onnx`` and scoring data.

Reading verifies the format, the schema version, the types of the fields the runtime reads, the
digest of the manifest's protected sections and the sha256 of every listed file before anything is
scored. Every file the runtime opens is reached through :func:`bundle_file`, which refuses a name
that is not listed in ``files``, lies outside the folder or fails its checksum.

Writing is atomic: a bundle is assembled in a hidden sibling folder and renamed into place, and a
manifest is replaced with ``os.replace``; a failure leaves nothing that looks like a bundle.

One module per concern; import from here, which names every public one:

- :mod:`.layout`: format name, schema versions, file names, size limits.
- :mod:`.manifest`: reading and validating a manifest (:func:`read_manifest`, :func:`load_manifest`).
- :mod:`.integrity`: the digests of the protected sections.
- :mod:`.schema1`: the exact form adexport 0.1.0 wrote, and its upgrade in memory.
- :mod:`.files`: checksums, ``files`` entries, and :func:`bundle_file`, the one way to open a file.
- :mod:`.atomic`: atomic JSON files and folders (:func:`atomic_dir`), used by export, calibrate,
  train and the Triton writer.
- :mod:`.overwrite`: what ``--overwrite`` may delete.
- :mod:`.locking`: the manifest lock around a read-modify-write.
"""

from adx_runtime.bundle.atomic import PARTIAL_MARKER, atomic_dir, clean_stale_partials, current_umask, write_json_atomic
from adx_runtime.bundle.files import bundle_file, bundle_folder, file_entry, sha256_file, verify_files
from adx_runtime.bundle.integrity import (OPTIONAL_PROTECTED_SECTIONS, PROTECTED_SECTIONS, integrity_section,
                                          section_digest)
from adx_runtime.bundle.layout import (BUNDLE_FORMAT, LOCK_FILE, MANIFEST, MAX_MANIFEST_BYTES, READABLE_SCHEMAS,
                                       SCHEMA_VERSION)
from adx_runtime.bundle.locking import LOCK_TIMEOUT_S, manifest_lock
from adx_runtime.bundle.manifest import load_manifest, read_manifest
from adx_runtime.bundle.overwrite import check_replaceable, is_bundle_folder
from adx_runtime.bundle.schema1 import upgrade_v1

__all__ = [
    "BUNDLE_FORMAT",
    "LOCK_FILE",
    "LOCK_TIMEOUT_S",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "OPTIONAL_PROTECTED_SECTIONS",
    "PARTIAL_MARKER",
    "PROTECTED_SECTIONS",
    "READABLE_SCHEMAS",
    "SCHEMA_VERSION",
    "atomic_dir",
    "bundle_file",
    "bundle_folder",
    "check_replaceable",
    "clean_stale_partials",
    "current_umask",
    "file_entry",
    "integrity_section",
    "is_bundle_folder",
    "load_manifest",
    "manifest_lock",
    "read_manifest",
    "section_digest",
    "sha256_file",
    "upgrade_v1",
    "verify_files",
    "write_json_atomic",
]
