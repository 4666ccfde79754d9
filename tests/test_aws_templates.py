"""The synthesized-template cache: keyed by content (settings, stack name, the code shipped),
shared through a directory by every process, never a reason to synthesize the same stack
twice. No synth happens here: a stand-in template is cached and read back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stepmap.aws import templates
from stepmap.aws.stack_config import StackConfig

FAKE = {"Resources": {"Marker": {"Type": "AWS::S3::Bucket"}}, "Description": "stand-in"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(templates.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(templates, "_MEMORY", {})
    return tmp_path / "cache"


def test_the_key_follows_the_settings_the_name_and_the_code(monkeypatch):
    base = templates.template_key(StackConfig())
    assert base == templates.template_key(StackConfig())
    assert base != templates.template_key(StackConfig(retries=3))
    assert base != templates.template_key(StackConfig(), "other-stack")
    monkeypatch.setattr(templates, "source_digest", lambda *args: "changed code")
    assert base != templates.template_key(StackConfig())


def test_a_cached_template_is_read_back_without_a_synth(cache, monkeypatch):
    config = StackConfig(workload="chaos")
    templates.remember(config, FAKE)
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == FAKE
    monkeypatch.setattr(templates, "_MEMORY", {})  # as a new process would start

    def no_synth(*args, **kwargs):
        raise AssertionError("synthesized although the template was cached")
    import stepmap.aws.stack as stack_module
    monkeypatch.setattr(stack_module, "synth_template", no_synth)
    assert templates.template_for(config) == FAKE
    assert templates.cached(StackConfig(workload="chaos", retries=0)) is None


def test_another_process_reads_the_cache(cache):
    templates.remember(StackConfig(workload="chaos"), FAKE)
    code = ("import json, sys; from stepmap.aws import templates; "
            "from stepmap.aws.stack_config import StackConfig; "
            "print(json.dumps(templates.cached(StackConfig(workload='chaos')))); "
            "print('aws_cdk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    cached, cdk_loaded = out.stdout.splitlines()
    assert json.loads(cached) == FAKE and cdk_loaded == "False"  # no jsii started


def test_a_corrupt_cache_file_is_ignored(cache):
    config = StackConfig(workload="chaos")
    cache.mkdir(parents=True)
    (cache / f"{templates.template_key(config)}.json").write_text("{not json")
    assert templates.cached(config) is None
