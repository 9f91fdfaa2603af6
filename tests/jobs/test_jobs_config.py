"""The [jobs] config section: defaults, and bad values named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from prsm_node.config import JobsSection, load_config
from prsm_node.errors import ConfigError
from prsm_node.jobs.process import JobLimits


def test_jobs_defaults_and_limits_from_the_section() -> None:
    section = JobsSection()
    assert section.kinds == ("inference", "distill") and section.device == "auto"
    limits = JobLimits.from_section(section)
    tighter = JobLimits(cpu_seconds=10, memory_mb=99_999, wall_seconds=5, threads=1)
    assert tighter.within(limits) == JobLimits(cpu_seconds=10, memory_mb=section.memory_mb,
                                               wall_seconds=5, threads=1)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[jobs]\nkinds = ['train']\n", "jobs.kinds", "unknown job kind 'train'"),
    ("[jobs]\ndevice = 'tpu'\n", "jobs.device", "one of auto, cpu, cuda"),
    ("[jobs]\nmemory_mb = 100\n", "jobs.memory_mb", "between 512 and"),
    ("[jobs]\nmax_concurrent = 0\n", "jobs.max_concurrent", "between 1 and 64"),
])
def test_bad_jobs_values_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as caught:
        load_config(path)
    assert caught.value.key == key
