"""config.yml and endpoints.yml: one typed object, errors with file and line."""

from __future__ import annotations

import pytest
from conftest import ROOT

from bot.cli import main
from bot.config import load_settings
from bot.errors import InvalidFiles


def test_shipped_config_loads_with_documented_defaults():
    settings = load_settings(ROOT)
    assert settings.build.model.base == "bundled"
    assert settings.build.model.max_length == 2048
    assert settings.data_dir == ROOT / "training_data"
    assert settings.endpoints.action_endpoint.url == "http://localhost:5055/webhook"


def test_missing_files_mean_defaults(tmp_path):
    settings = load_settings(tmp_path)
    assert settings.build_dir == tmp_path / "build"
    assert settings.cache_dir.name == "bot"


def test_unknown_key_and_wrong_type_are_located(tmp_path):
    (tmp_path / "config.yml").write_text("model:\n  bsae: bundled\n  max_length: long\n")
    (tmp_path / "endpoints.yml").write_text("action_endpoint:\n  url: [1]\n")
    with pytest.raises(InvalidFiles) as e:
        load_settings(tmp_path)
    assert [str(p) for p in e.value.problems] == [
        "config.yml:2:3: error: unknown key 'bsae' (did you mean 'base'?)",
        "config.yml:3:15: error: 'max_length' must be a whole number, not text",
        "endpoints.yml:2:8: error: 'url' must be text, not a list",
    ]


def test_cli_prints_config_errors_without_traceback(tmp_path, capsys):
    (tmp_path / "config.yml").write_text("model: [oops\n")
    assert main(["-C", str(tmp_path), "data", "validate"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("config.yml:2:1: error: YAML syntax:")
    assert "Traceback" not in out


def test_local_folder_as_base_model_resolves_against_the_project(tmp_path):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "config.yml").write_text("model:\n  base: my-model\n")
    assert load_settings(tmp_path).base_model == str(tmp_path / "my-model")
    (tmp_path / "config.yml").write_text("model:\n  base: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert load_settings(tmp_path).base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_shipped_config_documents_the_real_defaults():
    from bot.config import BuildConfig

    # config.yml says "the values here are the defaults": keep it true.
    assert load_settings(ROOT).build == BuildConfig()


def test_shipped_endpoints_document_the_real_defaults():
    from bot.config import Endpoints

    assert load_settings(ROOT).endpoints == Endpoints()
    template = ROOT / "bot" / "templates" / "project"
    assert (template / "endpoints.yml").read_text() == (ROOT / "endpoints.yml").read_text()
    assert (template / "config.yml").read_text() == (ROOT / "config.yml").read_text()


def test_a_lock_url_must_be_a_redis_url(tmp_path):
    (tmp_path / "endpoints.yml").write_text(
        "tracker_store:\n  type: postgresql\n  lock_url: postgresql://127.0.0.1/test\n"
    )
    with pytest.raises(InvalidFiles) as e:
        load_settings(tmp_path)
    assert [str(p) for p in e.value.problems] == [
        "endpoints.yml:3:13: error: 'lock_url' 'postgresql://127.0.0.1/test' is not a Redis URL: "
        "write redis://host:port/n"
    ]
    (tmp_path / "endpoints.yml").write_text(
        "tracker_store:\n  type: postgresql\n  lock_url: redis://127.0.0.1:6379/0\n"
    )
    assert load_settings(tmp_path).endpoints.tracker_store.lock_url == "redis://127.0.0.1:6379/0"


def test_a_script_that_rewrites_config_yml_keeps_its_words(tmp_path):
    """benchmarks/serve_load.py --brands and scripts/gpu_check.py write a changed copy of
    config.yml: read with PyYAML's YAML 1.1 rules, `speculation: on` became true and the copy
    was refused; read as the project reads it, the copy loads."""
    import yaml

    from bot.config import config_mapping, load_settings

    original = tmp_path / "original"
    original.mkdir()
    (original / "config.yml").write_text("serve:\n  speculation: on\n  max_batch: 4\n")
    assert yaml.safe_load((original / "config.yml").read_text())["serve"]["speculation"] is True  # the old reading
    config = config_mapping(original)
    config["serve"]["max_batch"] = 8
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.yml").write_text(yaml.safe_dump(config))
    serve = load_settings(copy).build.serve
    assert serve.speculation == "on" and serve.max_batch == 8
    assert config_mapping(tmp_path / "nowhere") == {}
