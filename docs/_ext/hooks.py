"""mkdocs hooks: put the committed benchmark plot into the site (it lives in
benchmarks/results/, outside docs/, so that the benchmark script owns it)."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
GENERATED = {"benchmarks/attention.png": ROOT / "benchmarks" / "results" / "attention.png"}


def on_files(files, config):
    for dest, source in GENERATED.items():
        if source.exists():
            files.append(File.generated(config, dest, abs_src_path=str(source)))
    return files
