"""The artifact store: HDF5 files with manifests, atomic writes, parts for resuming, locks, the
marker of an artifacts root, and the format declared once (``schema``)."""
from .files import (ARTIFACTS_MARKER, Artifact, ArtifactError, NoSpaceError, artifact_lock, artifact_path,
                    clear_orphan_parts, clear_parts, clear_temporary_files, describe, file_digest, file_sha256,
                    manifest_path, mark_artifacts_root, open_artifact, part_path, parts_dir, read_only, read_part,
                    remove_artifact, stable_hash, valid_digest, verification_record, verify, write_artifact,
                    write_part)
from .schema import SCHEMA_VERSION, STAGES, stage_schema

__all__ = ["ARTIFACTS_MARKER", "Artifact", "ArtifactError", "NoSpaceError", "artifact_lock", "artifact_path",
           "clear_orphan_parts", "clear_parts", "clear_temporary_files", "describe", "file_digest", "file_sha256",
           "manifest_path", "mark_artifacts_root", "open_artifact", "part_path", "parts_dir", "read_only", "read_part",
           "remove_artifact", "stable_hash", "valid_digest", "verification_record", "verify", "write_artifact",
           "write_part",
           "SCHEMA_VERSION", "STAGES", "stage_schema"]
