"""Build and run exported C models: the host compiler, and ``arm-none-eabi-gcc`` + QEMU for a Cortex-M4.

Used by the tests and the MCU benchmark (not by the exporter). The Cortex-M4 image uses the startup file and
linker script of ``templates/`` (QEMU's ``mps2-an386`` board: flash at 0x0, RAM at 0x20000000), newlib-nano and
semihosting; the same image linked against a smaller memory map proves that the model fits that part.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ...core.errors import ConfigError

HOST_CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")
ARM_CPU = ("-mcpu=cortex-m4", "-mthumb")
ARM_CFLAGS = (*HOST_CFLAGS, "-ffunction-sections", "-fdata-sections")
FLOAT_ABI = {"soft": ("-mfloat-abi=soft",), "hard": ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-DDS_USE_FPU")}
FLOAT_SYMBOLS = re.compile(r"__aeabi_[fd]|__aeabi_[ifu]2[fd]|__aeabi_l2[fd]|"
                           r"__(add|sub|mul|div|float|fix|extend|trunc)[a-z]*[sd]f[0-9]*|_dtoa|_printf_float")
"""Symbols of software floating point (libgcc) and float printing (newlib): none may be linked for DFP."""

NUMPY_TYPES = {"float": np.float32, "int8_t": np.int8, "uint8_t": np.uint8, "int16_t": np.int16,
               "uint16_t": np.uint16, "int32_t": np.int32, "int64_t": np.int64}

MEMORY_MAPS = {"256K/64K": ("256K", "64K"), "128K/32K": ("128K", "32K"), "64K/16K": ("64K", "16K"),
               "32K/8K": ("32K", "8K"), "16K/4K": ("16K", "4K")}
"""Flash/RAM of common Cortex-M4 parts (STM32F4-class down to the smallest), for the fit links."""


def templates_dir() -> Path:
    """The folder of the startup file, linker script and harness sources (a real path: compilers read it)."""
    return Path(str(resources.files("deepshrink.export.c").joinpath("templates")))


def host_compiler() -> str | None:
    return shutil.which("gcc") or shutil.which("cc")


@dataclass(frozen=True)
class ArmTools:
    gcc: str
    size: str
    nm: str
    qemu: str | None


def arm_tools() -> ArmTools | None:
    """The GNU Arm toolchain (and QEMU when installed), or None when ``arm-none-eabi-gcc`` is missing."""
    paths = [shutil.which(f"arm-none-eabi-{tool}") for tool in ("gcc", "size", "nm")]
    if not all(paths):
        return None
    gcc, size, nm = (str(p) for p in paths)
    return ArmTools(gcc, size, nm, shutil.which("qemu-system-arm"))


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
    if result.returncode:
        raise ConfigError(f"{what} failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    return result


def write_images(path: Path, inputs: np.ndarray, ctype: str) -> None:
    """``ds_images.h``: ``inputs`` (N x input size) compiled into the harness."""
    data = np.asarray(inputs).reshape(inputs.shape[0], -1).astype(NUMPY_TYPES[ctype])
    rows = []
    for row in data:
        if ctype == "float":
            vals = ", ".join(f"{float(v):.9g}".replace("inf", "INFINITY") + ("" if "." in f"{float(v):.9g}"
                             or "e" in f"{float(v):.9g}" else ".0") + "f" for v in row)
        else:
            vals = ", ".join(str(int(v)) for v in row)
        rows.append(f"    {{{vals}}}")
    text = (f"/* {data.shape[0]} test inputs for harness.c */\n#define DS_N_IMAGES {data.shape[0]}u\n"
            f"static const ds_input_t ds_images[DS_N_IMAGES][DS_INPUT_SIZE] = {{\n" + ",\n".join(rows) + "\n};\n")
    path.write_text(text)


def build_host(model_dir: str | os.PathLike[str], exe: str | os.PathLike[str], *, embedded: bool = False,
               extra: tuple[str, ...] = ()) -> Path:
    """Compile ``model.c`` with ``harness.c`` for the host (``-std=c99 -O2 -Wall -Wextra -Werror``)."""
    cc = host_compiler()
    if cc is None:
        raise ConfigError("no host C compiler (gcc/cc) on PATH")
    model_dir = Path(model_dir)
    defines = ["-DDS_EMBEDDED"] if embedded else []
    _run([cc, *HOST_CFLAGS, *defines, *extra, f"-I{model_dir}", str(templates_dir() / "harness.c"),
          str(model_dir / "model.c"), "-o", str(exe)], "host build")
    return Path(exe)


def run_host(exe: str | os.PathLike[str], inputs: np.ndarray, in_ctype: str, out_ctype: str, out_size: int,
             repeat: int = 1) -> tuple[np.ndarray, float]:
    """``(outputs (N x out_size), ns per input)`` of the host harness on ``inputs``."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        np.ascontiguousarray(inputs, dtype=NUMPY_TYPES[in_ctype]).tofile(src)
        result = _run([str(exe), str(src), str(dst), str(repeat)], "host harness")
        outputs = np.fromfile(dst, dtype=NUMPY_TYPES[out_ctype]).reshape(-1, out_size)
    match = re.search(r"ns_per_input ([0-9.]+)", result.stderr)
    return outputs, float(match.group(1)) if match else float("nan")


def run_host_text(exe: str | os.PathLike[str]) -> str:
    """The printed lines of an embedded-images host build."""
    return _run([str(exe)], "host harness").stdout


@dataclass
class ArmImage:
    """A linked Cortex-M4 image: its path, section sizes and the link's output."""

    axf: Path
    sections: dict[str, int]
    log: str

    @property
    def flash(self) -> int:
        """Bytes in flash: vectors, code and constants (.text holds .rodata), tables, .data's initial values."""
        return sum(v for k, v in self.sections.items() if k in (".isr_vector", ".text", ".ARM.extab", ".ARM.exidx",
                                                                  ".preinit_array", ".init_array", ".fini_array",
                                                                  ".data"))

    @property
    def static_ram(self) -> int:
        """RAM besides heap and stack: .data + .bss (the arena, the harness's buffers, the C library's state)."""
        return self.sections.get(".data", 0) + self.sections.get(".bss", 0)


def _linker_script(folder: Path, flash: str, ram: str) -> Path:
    text = (templates_dir() / "cortex_m4.ld.in").read_text().replace("@FLASH_SIZE@", flash)
    path = folder / f"cortex_m4_{flash}_{ram}.ld"
    path.write_text(text.replace("@RAM_SIZE@", ram))
    return path


def compile_arm(model_dir: str | os.PathLike[str], build: str | os.PathLike[str], *, main: str = "harness",
                float_abi: str = "soft", opt: str = "-O2") -> list[Path]:
    """Object files of startup, model and ``main`` (``harness``: the QEMU test program with embedded images from
    ``build/ds_images.h``; ``fit``: one inference, nothing else)."""
    tools = arm_tools()
    if tools is None:
        raise ConfigError("arm-none-eabi-gcc is not installed (make mcu-tools)")
    model_dir, build = Path(model_dir), Path(build)
    build.mkdir(parents=True, exist_ok=True)
    t = templates_dir()
    flags = [tools.gcc, *[f for f in ARM_CFLAGS if f != "-O2"], opt, *ARM_CPU, *FLOAT_ABI[float_abi],
             f"-I{model_dir}", f"-I{t}", f"-I{build}"]
    sources = {"startup": t / "startup_cm4.c", "model": model_dir / "model.c",
               main: t / ("harness.c" if main == "harness" else "fit_main.c")}
    objects = []
    for name, src in sources.items():
        obj = build / f"{name}.o"
        extra = ["-DDS_EMBEDDED"] if name == "harness" else []
        _run([*flags, *extra, "-c", str(src), "-o", str(obj)], f"arm-none-eabi-gcc {src.name}")
        objects.append(obj)
    return objects


def link_arm(objects: list[Path], axf: str | os.PathLike[str], *, flash: str = "4M", ram: str = "4M",
             stack: int | None = None, heap: int | None = None, semihosting: bool = True,
             float_abi: str = "soft") -> ArmImage | str:
    """Link ``objects`` for a part with ``flash``/``ram`` (GNU ld sizes, e.g. ``64K``): the image, or the linker's
    complaint (a string) when it does not fit."""
    tools = arm_tools()
    assert tools is not None
    axf = Path(axf)
    script = _linker_script(axf.parent, flash, ram)
    specs = ["--specs=nano.specs", "--specs=rdimon.specs" if semihosting else "--specs=nosys.specs"]
    sizes = []
    if stack is not None:
        sizes.append(f"-Wl,--defsym=__ds_stack_size={stack}")
    if heap is not None:
        sizes.append(f"-Wl,--defsym=__ds_heap_size={heap}")
    cmd = [tools.gcc, *ARM_CPU, *FLOAT_ABI[float_abi], *specs, "-nostartfiles", "-T", str(script),
           "-Wl,--gc-sections", *sizes, *map(str, objects), "-o", str(axf)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode:
        return (result.stdout + result.stderr).strip()
    return ArmImage(axf, section_sizes(axf), result.stdout + result.stderr)


def section_sizes(axf: str | os.PathLike[str]) -> dict[str, int]:
    """``arm-none-eabi-size -A``: bytes per section."""
    tools = arm_tools()
    assert tools is not None
    out = _run([tools.size, "-A", str(axf)], "arm-none-eabi-size").stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def float_routines(axf: str | os.PathLike[str]) -> list[str]:
    """Software floating-point symbols linked into ``axf`` (empty for an integer-only image)."""
    tools = arm_tools()
    assert tools is not None
    out = _run([tools.nm, str(axf)], "arm-none-eabi-nm").stdout
    return sorted({line.split()[-1] for line in out.splitlines() if line.split() and
                   FLOAT_SYMBOLS.search(line.split()[-1])})


def run_qemu(axf: str | os.PathLike[str], timeout: float = 120) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of the image on QEMU's ``mps2-an386`` (Cortex-M4) with semihosting."""
    tools = arm_tools()
    if tools is None or tools.qemu is None:
        raise ConfigError("qemu-system-arm is not installed (make mcu-tools)")
    cmd = [tools.qemu, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel", str(axf)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return result.returncode, result.stdout, result.stderr


def stack_peak(text: str) -> int | None:
    """The model's stack peak the harness printed (stack painting), or None."""
    match = re.search(r"\[ds\] model stack peak: (\d+) bytes", text)
    return int(match.group(1)) if match else None


def fit_maps(model_dir: str | os.PathLike[str], build: str | os.PathLike[str], stack: int,
             maps: dict[str, tuple[str, str]] | None = None, float_abi: str = "soft") -> dict[str, object]:
    """Link the one-inference program against each memory map (stack: the measured peak, no heap): the map name ->
    True, or the linker's reason it does not fit; plus the image's flash and static RAM as ``"flash"``/``"ram"``."""
    build = Path(build)
    objects = compile_arm(model_dir, build, main="fit", float_abi=float_abi)
    stack = -(-stack // 8) * 8
    result: dict[str, object] = {}
    big = link_arm(objects, build / "fit.axf", stack=stack, heap=0, semihosting=False, float_abi=float_abi)
    if isinstance(big, str):
        raise ConfigError(f"the fit program does not link even in 4M/4M: {big}")
    result.update(flash=big.flash, static_ram=big.static_ram, stack=stack)
    for name, (flash, ram) in (maps or MEMORY_MAPS).items():
        linked = link_arm(objects, build / f"fit_{flash}_{ram}.axf", flash=flash, ram=ram, stack=stack, heap=0,
                          semihosting=False, float_abi=float_abi)
        result[name] = True if isinstance(linked, ArmImage) else _overflow(linked)
    return result


def _overflow(log: str) -> str:
    found = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", log)
    return ", ".join(f"{region} over by {n} B" for region, n in found) or log.splitlines()[-1]
