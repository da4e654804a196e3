"""The artifact store, one concern a module: digests (``digests``), the one atomic writer and the
HDF5 artifact writer (``writing``), trusting and opening artifacts (``verification``), parts for
resuming (``parts``), locks between processes (``locks``), the format declared once (``schema``),
the catalog of an artifacts root: layout, side files, input roles and lineage (``catalog``), the
only module that knows where things lie, and how an output names a path (``naming``)."""
from . import catalog, naming
from .catalog import (ARTIFACTS_MARKER, ArtifactError, artifact_path, manifest_path, part_path, parts_dir,
                      report_folder, verification_record)
from .digests import file_digest, file_sha256, stable_hash
from .locks import alone, artifact_lock, running, unless_running
from .parts import clear_orphan_parts, clear_parts, clear_temporary_files, read_part, write_part
from .schema import SCHEMA_VERSION, STAGES, stage_schema
from .verification import (Artifact, describe, forget, open_artifact, read_only, remove_artifact, valid_digest,
                           verify)
from .writing import (NoSpaceError, ReadOnlyLocation, atomic_output, atomic_write_bytes, atomic_write_text,
                      check_writable, made_by, mark_artifacts_root, refused, write_artifact, writing_in)

__all__ = ["catalog", "naming", "ARTIFACTS_MARKER", "Artifact", "ArtifactError", "NoSpaceError", "ReadOnlyLocation", "alone",
           "artifact_lock", "artifact_path", "atomic_output", "atomic_write_bytes", "atomic_write_text", "check_writable",
           "clear_orphan_parts", "clear_parts", "clear_temporary_files", "describe", "file_digest", "file_sha256",
           "forget", "made_by", "manifest_path", "mark_artifacts_root", "open_artifact", "part_path", "parts_dir", "read_only",
           "read_part", "refused", "remove_artifact", "running", "unless_running", "report_folder", "stable_hash",
           "valid_digest", "verification_record", "verify", "write_artifact", "write_part", "writing_in",
           "SCHEMA_VERSION", "STAGES", "stage_schema"]
