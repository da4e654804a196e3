"""The artifact store: HDF5 files with manifests, atomic writes, parts for resuming, locks
(``files``), the format declared once (``schema``) and the catalog of an artifacts root: layout,
side files, input roles and lineage (``catalog``)."""
from . import catalog
from .catalog import (ARTIFACTS_MARKER, ArtifactError, artifact_path, manifest_path, part_path, parts_dir,
                      report_folder, verification_record)
from .files import (Artifact, NoSpaceError, artifact_lock, atomic_output, atomic_write_bytes, atomic_write_text,
                    clear_orphan_parts, clear_parts, clear_temporary_files, describe, file_digest, file_sha256,
                    mark_artifacts_root, open_artifact, running, unless_running, read_only, read_part, remove_artifact, stable_hash, valid_digest, verify,
                    write_artifact, write_part)
from .schema import SCHEMA_VERSION, STAGES, stage_schema

__all__ = ["catalog", "ARTIFACTS_MARKER", "Artifact", "ArtifactError", "NoSpaceError", "artifact_lock",
           "artifact_path", "atomic_output", "atomic_write_bytes", "atomic_write_text", "clear_orphan_parts",
           "clear_parts", "clear_temporary_files", "describe", "file_digest", "file_sha256", "manifest_path",
           "mark_artifacts_root", "open_artifact", "part_path", "parts_dir", "read_only", "read_part", "remove_artifact", "running", "unless_running",
           "report_folder", "stable_hash", "valid_digest", "verification_record", "verify", "write_artifact",
           "write_part", "SCHEMA_VERSION", "STAGES", "stage_schema"]
