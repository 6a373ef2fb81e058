"""Result folders on disk: the Arrow schema, atomic streaming writes, and ``load``.

Files are plain Arrow (IPC by default, Parquet on request) with canonical
``arrow.fixed_shape_tensor`` columns, self-describing through schema metadata; a result folder
appears complete or not at all. Paths are local or ``pyarrow.fs`` URIs (``s3://...``).
"""

from ._folders import is_uri as is_uri
from ._formats import FORMATS as FORMATS
from ._formats import Format as Format
from ._read import Result as Result
from ._read import ResultError as ResultError
from ._read import load as load
from ._read import read_sparsity as read_sparsity
from ._read import read_stability as read_stability
from ._schema import SCHEMA as SCHEMA
from ._write import check_destination as check_destination
from ._write import holds_result as holds_result
from ._write import result_path as result_path
from ._write import write_result as write_result

__all__ = ["FORMATS", "Format", "Result", "ResultError", "SCHEMA", "check_destination",
           "holds_result", "is_uri", "load", "read_sparsity", "read_stability", "result_path", "write_result"]
