"""espeak-ng in-process through ctypes (the ``espeakng-loader`` wheel), repeatable bit for bit.

espeak-ng keeps synthesis state in C statics that no API call resets: the pitch flutter
phase (``Flutter_ix``), the roughness cycle counter, the automatic gain control and the
Klatt filter memories; and ``espeak_Initialize`` seeds its noise generator (breathy
variants such as f2, f3, f5) from ``time()``.  Driven in-process, the same caption thus came
out a few samples longer or shorter, with different samples, depending on what the process
had spoken before; ``espeak_Terminate`` + ``espeak_Initialize`` does not help, as the
function-level statics survive it.  So every caption is spoken by a fresh instance of the
library: dlopen, initialise, set voice, rate, pitch and a fixed noise seed, speak, dlclose
(about 0.5 ms of the ~3 ms a caption costs).  The library is loaded from a private copy so
no other loader in the process can pin it (dlclose must really unload it), next to a mirror
of ``espeak-ng-data`` with lower-case voice paths so loading a voice skips espeak's 2 ms
scan of every voice file.  Both live in ``~/.cache/vgs/espeak-ng-<hash>/`` (built once).
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .errors import VGSError


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]  # union: a phoneme's name


class _VoiceInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_SYNCHRONOUS, _PHONEME_EVENTS, _DONT_EXIT, _CHARS_UTF8, _RATE, _PITCH = 2, 0x0001, 0x8000, 1, 1, 3
_EVENT_WORD, _EVENT_PHONEME = 1, 7


def _languages(address: int) -> list[str]:
    """Decode espeak's language list: (priority byte, NUL-terminated name)*, then a 0 byte."""
    names = []
    while ctypes.c_ubyte.from_address(address).value:
        name = ctypes.string_at(address + 1)
        names.append(name.decode())
        address += len(name) + 2
    return names


class EspeakEngine:
    """espeak-ng driven through ctypes; every caption gets a fresh instance of the library.

    Calls from several threads are serialised by a lock."""

    def __init__(self) -> None:
        import espeakng_loader  # noqa: PLC0415 - imported when first used

        library = Path(espeakng_loader.get_library_path())
        root = _private_dir(library, Path(espeakng_loader.get_data_path()))
        self._home = root / "espeak-ng-data"
        self._lib_path = _loadable(root / library.name, library)
        self._callback = _CALLBACK(self._on_audio)
        self._chunks: list[bytes] = []
        self._words: list[tuple[int, int]] = []
        self._phonemes: list[int] = []
        self._lock = threading.Lock()
        self._libc = ctypes.CDLL(None)
        self.rate = 22050  # set by espeak_Initialize
        self.voices, self.variants = self._list_voices()

    def _open(self) -> ctypes.CDLL:
        """dlopen + espeak_Initialize: all of the library's static state starts afresh."""
        lib = ctypes.CDLL(str(self._lib_path))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceInfo))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 500, str(self._home).encode(), _DONT_EXIT | _PHONEME_EVENTS)
        if self.rate <= 0:
            self._close(lib)
            raise VGSError(f"espeak-ng failed to initialise (code {self.rate}) with data in {self._home}")
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    @staticmethod
    def _close(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)

    def _list_voices(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """Voices and variants from espeak_ListVoices, keyed by lower-case file name (``en-us``, ``f2``)."""
        lib, tables = self._open(), []
        try:
            spec = _VoiceInfo(languages=ctypes.cast(ctypes.c_char_p(b"variant"), ctypes.c_void_p))
            for query in (None, ctypes.byref(spec)):
                found, rows, i = lib.espeak_ListVoices(query), {}, 0
                while found[i]:
                    v, i = found[i].contents, i + 1
                    ident = v.identifier.decode()
                    rows[ident.split("/")[-1].lower()] = {
                        "identifier": ident, "description": v.name.decode(), "languages": _languages(v.languages),
                        "gender": {1: "male", 2: "female"}.get(v.gender, "")}
                tables.append(rows)
        finally:
            self._close(lib)
        return tables[0], tables[1]

    def resolve(self, name: str) -> str:
        """``en-us+f2`` -> the name espeak loads without scanning its voice list (``gmw/en-us+f2``)."""
        base, _, variant = name.partition("+")
        found = self.voices.get(base.lower()) or next(
            (v for v in self.voices.values() if v["description"].lower() == base.lower()), None)
        if found is None:
            english = ", ".join(sorted(k for k, v in self.voices.items() if v["languages"][0].startswith("en")))
            raise VGSError(f"unknown espeak-ng voice {base!r} in {name!r}; English voices: {english}")
        if variant and variant.lower() not in self.variants:
            raise VGSError(f"unknown espeak-ng variant {variant!r} in {name!r}; e.g. m1-m8, f1-f5 (vgs voices)")
        suffix = "+" + self.variants[variant.lower()]["identifier"][3:] if variant else ""
        return found["identifier"].lower() + suffix

    def _on_audio(self, wav: ctypes.Array, count: int, events: ctypes.Array) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        i = 0
        while events[i].type != 0:
            event, i = events[i], i + 1
            if event.type == _EVENT_WORD:
                self._words.append((event.text_position - 1, event.sample))
            elif event.type == _EVENT_PHONEME and not event.id.startswith(b"_"):  # "_": a pause
                self._phonemes.append(event.sample)
        return 0

    def synthesize(self, text: str, name: str, rate: int, pitch: int) -> tuple[np.ndarray, list, list[int]]:
        """Speak ``text`` with voice ``name`` at ``rate`` words/min and ``pitch`` 0-99.

        Returns int16 audio at :attr:`rate`, shape ``N``; (character index, sample) per word
        event; the sample where each phoneme (not pause) starts.
        """
        target = self.resolve(name).encode()
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._chunks, self._words, self._phonemes = [], [], []
            lib = self._open()
            try:
                if lib.espeak_SetVoiceByName(target) != 0:
                    raise VGSError(f"espeak-ng could not load voice {name!r}")
                lib.espeak_SetParameter(_RATE, rate, 0)
                lib.espeak_SetParameter(_PITCH, pitch, 0)
                if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52; else seeded from time()
                    lib.espeak_ng_SetRandSeed(1)
                self._libc.srand(1)  # the speechPlayer (Klatt) path draws from libc rand()
                if lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None) != 0:
                    raise VGSError(f"espeak-ng failed to speak {text[:60]!r}")
                lib.espeak_Synchronize()
            finally:
                self._close(lib)
            return np.frombuffer(b"".join(self._chunks), dtype=np.int16), self._words, self._phonemes


def _private_dir(library: Path, data: Path) -> Path:
    """A cached folder with a copy of the library (so no other loader in the process pins it and
    dlclose unloads it) and ``espeak-ng-data`` with lower-case voice paths.  Built once per library."""
    digest = hashlib.sha256(library.read_bytes() + str(data).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vgs"
    final = base / f"espeak-ng-{digest}"
    if final.is_dir():
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=base))
    except OSError:  # no writable cache: a folder for this process only (left in the temp folder)
        build, final = Path(tempfile.mkdtemp(prefix="vgs-espeak-")), None
    shutil.copy2(library, build / library.name)
    _lowercase_voice_tree(build / "espeak-ng-data", data)
    if final is None:
        return build
    try:
        build.rename(final)
    except OSError:  # another process finished first
        shutil.rmtree(build, ignore_errors=True)
    return final


def _loadable(copy: Path, library: Path) -> Path:
    """``copy`` when it can be loaded (not on a noexec mount), else the wheel's own ``library``."""
    try:
        _ctypes.dlclose(ctypes.CDLL(str(copy))._handle)
    except OSError as exc:
        warnings.warn(f"cannot load a private copy of espeak-ng ({exc}); using {library}, which repeats "
                      "exactly only while nothing else in the process loads it", RuntimeWarning, stacklevel=2)
        return library
    return copy


def _lowercase_voice_tree(home: Path, data: Path) -> None:
    """Mirror ``data`` into ``home`` with lower-case voice paths: espeak lower-cases the voice name
    it is given and scans every voice file (2 ms) when it cannot open that path directly."""
    home.mkdir()
    for entry in data.iterdir():
        if entry.name != "lang":
            (home / entry.name).symlink_to(entry)
    for path in sorted((data / "lang").rglob("*")):
        link = home / "lang" / str(path.relative_to(data / "lang")).lower()
        if path.is_file() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
