"""Loading checkpoints without running code from them: ``torch.load(weights_only=True)`` with
an allowlist of exactly the types MMEngine checkpoints hold.

A checkpoint is a pickle, and unpickling a file calls whatever functions it names. torch's
``weights_only`` unpickler only calls allowlisted globals. An MMEngine training checkpoint
(``iter_N.pth``/``epoch_N.pth``: model, optimizer, schedulers, message hub, meta) holds, besides
tensors and plain containers, only:

- numpy arrays and scalars (``HistoryBuffer`` histories; numbers in the message hub): numpy's
  ``_reconstruct``, ``ndarray``, ``dtype``, ``scalar`` (under numpy 2's ``numpy._core`` and
  numpy 1's ``numpy.core`` names) and the numeric dtype classes (``BUILD`` checks the type of
  the ``dtype`` object it sets the state of: ``numpy.dtypes.Float64DType`` etc.);
- ``mmengine.logging.HistoryBuffer``;
- ``builtins.getattr``, called only as ``getattr(HistoryBuffer, 'min')`` (and ``max``,
  ``current``, ``mean``): ``HistoryBuffer.__getstate__`` saves its statistics methods, and
  pickle spells a function of a class that way. The allowlist maps the name
  ``builtins.getattr`` to :func:`_history_buffer_method`, which returns those four functions and
  refuses every other call, so no other attribute of anything is reachable.

Everything else (a crafted ``__reduce__`` calling ``os.system``, a class of another library) is
refused with :class:`UnsafeCheckpointError`, naming the globals and the command-line flag that
opts in for a trusted file. :func:`safe_loading` routes MMEngine's own loading of local files
(``Runner.resume``/``load_checkpoint``, ``load_from``, ``Pretrained`` init) through
:func:`load_checkpoint_file` for a block: MMEngine 0.10 calls ``torch.load`` without
``weights_only``.
"""
import codecs
import os
import pickle
import pickletools
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

PathLike = Union[str, Path]

#: What every loader here expects, for error messages.
EXPECTED = ('a PyTorch checkpoint written by torch.save (a zip archive: an MMEngine '
            'iter_N.pth/epoch_N.pth, or a state dict)')
#: The flag of ``tools/train.py``, ``test.py`` and ``fuse_model.py`` that opts in.
TRUST_FLAG = '--trust-checkpoint'
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'
_HISTORY_METHODS = ('min', 'max', 'current', 'mean')


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the path and what was
    expected."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle names globals outside the allowlist.

    Attributes:
        path: The file.
        globals: The refused globals, as ``module.name`` (empty when the unpickler refused a
            call of allowed globals, e.g. ``getattr`` beyond the allowlist; ``reason`` says).
    """

    def __init__(self, path: PathLike, names: List[str], flag: str,
                 reason: Optional[str] = None) -> None:
        self.path = str(path)
        self.globals = names
        what = reason or f'it names {", ".join(names)}'
        super().__init__(
            f'refusing to load {path}: {what}; MMEngine, mmdet and mmseg checkpoints hold '
            'nothing of the kind, and unpickling it would run code the file chooses. If you '
            f'trust the file (you wrote it, or its source), pass {flag} to load it with '
            'torch.load(weights_only=False).')


def _history_buffer_method(owner: Any, name: str) -> Callable:
    """``getattr`` as the allowlist provides it: only ``HistoryBuffer``'s statistics methods."""
    if owner is not HistoryBuffer or name not in _HISTORY_METHODS:
        raise pickle.UnpicklingError(
            f'getattr({owner!r}, {name!r}) is not allowed: a checkpoint may only name '
            f'HistoryBuffer.{{{",".join(_HISTORY_METHODS)}}} this way')
    return getattr(HistoryBuffer, name)


def _numpy_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """numpy arrays, scalars and numeric dtypes, under numpy 1's and numpy 2's module names."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    names: List[Union[Callable, Tuple[Callable, str]]] = [np.ndarray, np.dtype]
    for function in ('_reconstruct', 'scalar'):
        names += [(getattr(multiarray, function), f'numpy.{core}.multiarray.{function}')
                  for core in ('core', '_core')]
    names += [type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG']
    return names


#: The allowlist (see the module docstring).
SAFE_GLOBALS = _numpy_globals() + [HistoryBuffer,
                                   (_history_buffer_method, 'builtins.getattr')]
#: What a Detectron ``.pkl`` (a plain pickle of numpy arrays) may name: numpy, and the bytes
#: decoder of protocol-2 pickles written by Python 3 (torch's own allowlist has it too).
NUMPY_GLOBALS = _numpy_globals() + [(codecs.encode, '_codecs.encode')]


def _allowed_names(allowlist: List) -> dict:
    return {entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}':
            entry[0] if isinstance(entry, tuple) else entry
            for entry in allowlist}


@contextmanager
def allowlisted(allowlist: Optional[List] = None) -> Iterator[None]:
    """Extend torch's ``weights_only`` allowlist by ``allowlist`` (default
    :data:`SAFE_GLOBALS`) inside the block; entries the process had already are left in place
    on exit (``torch.serialization.safe_globals`` would remove them)."""
    present = set(torch.serialization.get_safe_globals())
    missing = [g for g in (SAFE_GLOBALS if allowlist is None else allowlist)
               if g not in present]
    with torch.serialization.safe_globals(missing):
        yield


def check_file(path: PathLike) -> str:
    """The kind of a checkpoint file, ``'zip'`` (torch >= 1.6) or ``'pickle'`` (a pickle:
    torch's legacy format or a plain pickle), after checking it exists, is not empty, and, if a
    zip archive, is complete.

    Raises:
        CheckpointError: Naming the path, what is wrong and what was expected.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise CheckpointError(f'checkpoint {path} does not exist; expected {EXPECTED}')
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} is a directory, not a file; expected '
                              f'{EXPECTED}')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes); expected {EXPECTED}')
    with path.open('rb') as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f'checkpoint {path} is truncated or corrupt: a zip archive of {size} bytes '
                f'without its end record (a download or copy cut short?); expected {EXPECTED}')
        return 'zip'
    if head.startswith(_PICKLE_PROTO):
        return 'pickle'
    raise CheckpointError(f'{path} is not a checkpoint (it starts with {head!r}); expected '
                          f'{EXPECTED}')


def _pickle_globals(stream: IO[bytes], count: int) -> List[str]:
    """The globals the first ``count`` pickles of ``stream`` name, read without unpickling
    (``pickletools.genops``; protocol-4 ``STACK_GLOBAL`` names are followed through the memo)."""
    names: List[str] = []
    for _ in range(count):
        strings: List[Optional[str]] = []
        memo: dict = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ('GLOBAL', 'INST'):
                    names.append(arg.replace(' ', '.'))
                elif opcode.name == 'STACK_GLOBAL':
                    module, name = (strings[-2:] + [None, None])[:2]
                    names.append(f'{module}.{name}' if module and name else '<STACK_GLOBAL>')
                elif opcode.name in ('MEMOIZE', 'PUT', 'BINPUT', 'LONG_BINPUT'):
                    memo[len(memo) if arg is None else arg] = strings[-1] if strings else None
                elif opcode.name in ('GET', 'BINGET', 'LONG_BINGET'):
                    strings.append(memo.get(arg))
                else:
                    strings.append(arg if isinstance(arg, str) else None)
        except (ValueError, EOFError):  # past the last pickle (legacy format: storage bytes)
            break
    return list(dict.fromkeys(names))


def unsafe_globals(path: PathLike, kind: str, allowlist: Optional[List] = None) -> List[str]:
    """The globals ``path`` names that torch's defaults and ``allowlist`` (default
    :data:`SAFE_GLOBALS`) do not allow, found without unpickling."""
    with allowlisted(allowlist):
        if kind == 'zip':
            return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    allowed = _allowed_names(SAFE_GLOBALS if allowlist is None else allowlist)
    # torch's legacy format: magic number, protocol, system info, then the object. torch's
    # own names (its defaults) are left to torch.load, which refuses any it does not allow.
    with open(path, 'rb') as f:
        found = _pickle_globals(f, count=4)
    return [name for name in found
            if name not in allowed and not name.startswith(('torch.', 'collections.'))]


def _weights_only_reason(error: Exception) -> str:
    """torch's reason for refusing, without its advice to set ``weights_only=False``."""
    text = str(error)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip().split('\n')[0]


def load_checkpoint_file(path: PathLike,
                         map_location: Any = 'cpu',
                         trust: bool = False,
                         flag: str = TRUST_FLAG) -> Any:
    """``torch.load`` a checkpoint without running code from it, unless ``trust``.

    Args:
        path: Local file.
        map_location: As for ``torch.load``.
        trust: Load with ``weights_only=False`` (runs the file's pickle): for files the user
            vouches for.
        flag: The option that sets ``trust``, named in :class:`UnsafeCheckpointError`.

    Returns:
        What ``torch.save`` saved.

    Raises:
        CheckpointError: A missing, empty, truncated or non-checkpoint file.
        UnsafeCheckpointError: A file naming globals outside :data:`SAFE_GLOBALS`.
    """
    kind = check_file(path)
    path = os.path.expanduser(str(path))
    if not trust:
        refused = unsafe_globals(path, kind)
        if refused:
            raise UnsafeCheckpointError(path, refused, flag)
    try:
        if trust:
            return torch.load(path, map_location=map_location, weights_only=False)
        with allowlisted():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if trust:
            raise CheckpointError(f'cannot unpickle {path}: {error}; expected {EXPECTED}') from None
        reason = _weights_only_reason(error)
        if 'allowlisted' in reason or 'allowed' in reason or 'unrecognized' in reason:
            raise UnsafeCheckpointError(path, [], flag, reason) from None
        raise CheckpointError(f'{path} is not a readable checkpoint ({reason}); expected '
                              f'{EXPECTED}') from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().split('\n')[0]
        raise CheckpointError(f'{path} is not a readable checkpoint ({type(error).__name__}: '
                              f'{reason}); expected {EXPECTED}') from None


class _NumpyUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`NUMPY_GLOBALS` (Python's "restricting
    globals"): every function a pickle can call comes through ``find_class``."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_names(NUMPY_GLOBALS)
        full = f'{module}.{name}'
        if full not in allowed:
            raise pickle.UnpicklingError(f'global {full} is not allowed')
        return allowed[full]


def load_pickle_file(path: PathLike, trust: bool = False, flag: str = '--trust-source',
                     encoding: str = 'latin1') -> Any:
    """Unpickle a plain pickle of numpy arrays (Detectron ``.pkl``) without running code.

    Globals outside numpy's arrays, scalars and numeric dtypes are refused (listed without
    unpickling) unless ``trust``. ``encoding='latin1'`` reads Python 2 pickles.

    Raises:
        CheckpointError: A missing, empty or non-pickle file.
        UnsafeCheckpointError: A file naming other globals.
    """
    path = Path(os.path.expanduser(str(path)))
    expected = 'a pickle of numpy arrays (a Detectron .pkl)'
    if not path.is_file() or path.stat().st_size == 0:
        state = 'is empty' if path.is_file() else 'does not exist'
        raise CheckpointError(f'{path} {state}; expected {expected}')
    if not trust:
        with path.open('rb') as f:
            found = _pickle_globals(f, count=1)
        refused = [name for name in found if name not in _allowed_names(NUMPY_GLOBALS)]
        if refused:
            raise UnsafeCheckpointError(path, refused, flag)
    with path.open('rb') as f:
        try:
            if trust:
                return pickle.load(f, encoding=encoding)
            return _NumpyUnpickler(f, encoding=encoding).load()
        except pickle.UnpicklingError as error:
            if not trust and 'is not allowed' in str(error):
                raise UnsafeCheckpointError(path, [], flag, str(error)) from None
            raise CheckpointError(f'{path} is not a readable pickle ({error}); expected '
                                  f'{expected}') from None
        except (EOFError, ValueError, TypeError, AttributeError, KeyError) as error:
            raise CheckpointError(f'{path} is not a readable pickle ({type(error).__name__}: '
                                  f'{error}); expected {expected}') from None


@contextmanager
def safe_loading(trust: bool = False, flag: str = TRUST_FLAG) -> Iterator[None]:
    """Route MMEngine's loading of local checkpoint files through :func:`load_checkpoint_file`
    inside the block.

    MMEngine's ``Runner.resume``, ``Runner.load_checkpoint``, ``load_from`` and the
    ``Pretrained`` init all read files through ``CheckpointLoader``'s scheme for local paths
    (the prefix ``''``), whose loader calls ``torch.load`` without ``weights_only``. The block
    registers :func:`load_checkpoint_file` for that scheme (MMEngine's public
    ``CheckpointLoader.register_scheme``) and restores MMEngine's loader on exit. Remote schemes
    (``https://``, ``open-mmlab://``) keep MMEngine's loaders, which call ``torch.load`` with
    torch's default ``weights_only=True``; inside the block that load has the allowlist too.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    # What MMEngine would call for a local path now (its own loader, or an outer block's).
    previous = CheckpointLoader._get_checkpoint_loader('')

    # MMEngine logs 'Loads checkpoint by <name[10:]> backend': 'local_weights_only'.
    def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
        return load_checkpoint_file(filename, map_location, trust, flag)

    CheckpointLoader.register_scheme('', load_from_local_weights_only, force=True)
    try:
        with allowlisted():
            yield
    finally:
        CheckpointLoader.register_scheme('', previous, force=True)
