"""Configuration (cxr_node.settings): precedence, validation with named keys, secrets, paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from cxr_node.destination_kinds import Hl7Destination
from cxr_node.destinations import Destination, Router, parse_destination, validate_ae_title
from cxr_node.errors import ConfigurationError
from cxr_node.settings import Settings as SettingsModel
from cxr_node.settings import load_settings

PASSWORD = "hunter2-s3cr3t"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CXR_NODE_* variable of the calling shell leaks in; relative paths land in tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith("CXR_NODE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cxr-node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- precedence: defaults < YAML file < environment < flags -----------------------------------


def test_defaults_without_file_env_or_flags() -> None:
    settings = load_settings()
    assert settings.ae_title == "CXR_NODE"
    assert settings.port == 11112
    assert settings.destinations == []
    assert settings.broker_url is None
    assert settings.embedded_queue is True
    assert settings.critical_findings == ["Pneumothorax"]


def test_yaml_file_overrides_defaults(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "ae_title: FILE_AE\nport: 2000\nstudy_quiet_seconds: 7.5\n")
    settings = load_settings(config)
    assert (settings.ae_title, settings.port, settings.study_quiet_seconds) == (
        "FILE_AE",
        2000,
        7.5,
    )
    # keys the file does not name keep their defaults
    assert settings.max_pdu == 262144


def test_environment_overrides_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _yaml(tmp_path, "ae_title: FILE_AE\nport: 2000\n")
    monkeypatch.setenv("CXR_NODE_PORT", "3000")
    settings = load_settings(config)
    assert settings.port == 3000
    assert settings.ae_title == "FILE_AE"  # not in the environment: the file still counts


def test_flags_override_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _yaml(tmp_path, "ae_title: FILE_AE\nport: 2000\nlog_level: WARNING\n")
    monkeypatch.setenv("CXR_NODE_PORT", "3000")
    monkeypatch.setenv("CXR_NODE_AE_TITLE", "ENV_AE")
    settings = load_settings(config, port=4000)
    assert settings.port == 4000
    assert settings.ae_title == "ENV_AE"
    assert settings.log_level == "WARNING"


def test_flag_given_as_none_does_not_hide_lower_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """argparse hands over None for flags not given: they must not override env or file."""
    monkeypatch.setenv("CXR_NODE_PORT", "3000")
    config = _yaml(tmp_path, "ae_title: FILE_AE\n")
    settings = load_settings(config, port=None, ae_title=None)
    assert (settings.port, settings.ae_title) == (3000, "FILE_AE")


def test_missing_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


# --- bad values name their key ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        ({"port": 70000}, "port"),
        ({"port": 0}, "port"),
        ({"colour": "red"}, "colour"),
        ({"ae_title": "A" * 17}, "ae_title"),
        ({"ae_title": "BAD\\AE"}, "ae_title"),
        ({"ae_title": "    "}, "ae_title"),
        ({"destinations": ["PACS-host-104"]}, "destinations"),
        ({"destinations": ["PACS@host:104", "no-at-sign:104"]}, "destinations"),
        ({"destinations": ["PACS@host:70000"]}, "destinations"),
        ({"destinations": ["SEVENTEEN_CHARS_X@host:104"]}, "destinations"),
        ({"broker_url": f"http://user:{PASSWORD}@host:6379/0"}, "broker_url"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_flag_value_raises_configuration_error_naming_the_key(
    flags: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(**flags)
    assert f"'{key}" in str(raised.value)


def test_bad_broker_scheme_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(broker_url=f"http://user:{PASSWORD}@host:6379/0")
    assert PASSWORD not in str(raised.value)


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(colour="red")
    message = str(raised.value)
    assert "unknown key" in message
    assert "ae_title" in message and "destinations" in message


def test_unknown_nested_key_lists_the_keys_allowed_at_its_level(tmp_path: Path) -> None:
    config = _yaml(
        tmp_path,
        "destinations:\n  - {name: viewer, ae_title: V, host: h, port: 104, colour: red}\n"
        "sources:\n  - {ae_title: ER, destinationz: [viewer]}\n"
        "eligibility: {modalitiez: [CR]}\n",
    )
    with pytest.raises(ConfigurationError) as raised:
        load_settings(config)
    lines = {
        key: text
        for key, text in re.findall(
            r"configuration key '([^']+)': ([^;]+; [^;]+)", str(raised.value)
        )
    }
    destination = lines["destinations.0.colour"]
    assert "allowed keys here: ae_title, host, kind, name, port, shadow, tls" in destination
    assert "allowed keys here: ae_title, destinations, host" in lines["sources.0.destinationz"]
    eligibility = lines["eligibility.modalitiez"]
    assert "modalities" in eligibility and "broker_url" not in eligibility


def test_bad_value_in_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_PORT", "70000")
    with pytest.raises(ConfigurationError, match="'port'"):
        load_settings()


def test_bad_broker_scheme_in_environment_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_BROKER_URL", "mysql://db/queue")
    with pytest.raises(ConfigurationError, match="'broker_url'"):
        load_settings()


def test_unknown_key_in_yaml_file_names_the_key(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "port: 2000\nwindow_colour: blue\n")
    with pytest.raises(ConfigurationError, match="'window_colour'"):
        load_settings(config)


def test_bad_ae_title_in_yaml_file_names_the_key(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "ae_title: WAY_TOO_LONG_AE_TITLE\n")
    with pytest.raises(ConfigurationError, match="'ae_title'"):
        load_settings(config)


def test_malformed_yaml_is_a_configuration_error(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "port: [2000\n")
    with pytest.raises(ConfigurationError):
        load_settings(config)


def test_yaml_that_is_not_a_mapping_is_a_configuration_error(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "- port\n- ae_title\n")
    with pytest.raises(ConfigurationError, match=str(config)):
        load_settings(config)


# --- AE titles and destinations ---------------------------------------------------------------


def test_ae_title_is_stripped_of_padding() -> None:
    assert validate_ae_title("  PACS  ") == "PACS"
    assert load_settings(ae_title="NODE ").ae_title == "NODE"


@pytest.mark.parametrize("bad", ["", "   ", "A" * 17, "A\\B", "ÄRZTE", "TAB\tAE"])
def test_validate_ae_title_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_ae_title(bad)


def test_parse_destination() -> None:
    destination = parse_destination(" PACS@10.1.2.3:104 ")
    assert destination == Destination(ae_title="PACS", host="10.1.2.3", port=104)
    assert str(destination) == "PACS@10.1.2.3:104"
    assert parse_destination(str(destination)) == destination


@pytest.mark.parametrize(
    "bad", ["PACS@host", "@host:104", "PACS@:104", "PACS@host:port", "PACSHOST:104", "P@h:123456"]
)
def test_parse_destination_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_destination(bad)


def test_destinations_from_flag_strings() -> None:
    settings = load_settings(destinations=["PACS@pacs.local:104", "VIEW@10.0.0.9:11112"])
    assert settings.destinations == [
        Destination(ae_title="PACS", host="pacs.local", port=104),
        Destination(ae_title="VIEW", host="10.0.0.9", port=11112),
    ]


def test_destinations_from_comma_separated_string_flag() -> None:
    settings = load_settings(destinations="PACS@pacs.local:104, VIEW@10.0.0.9:11112,")
    assert [str(d) for d in settings.destinations] == ["PACS@pacs.local:104", "VIEW@10.0.0.9:11112"]


def test_destinations_from_yaml_list(tmp_path: Path) -> None:
    config = _yaml(tmp_path, "destinations:\n  - PACS@pacs.local:104\n  - VIEW@viewer:4242\n")
    settings = load_settings(config)
    assert [str(d) for d in settings.destinations] == ["PACS@pacs.local:104", "VIEW@viewer:4242"]


def test_destinations_from_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", '["PACS@pacs.local:104"]')
    assert [str(d) for d in load_settings().destinations] == ["PACS@pacs.local:104"]


def test_destinations_from_comma_separated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_DESTINATIONS", "PACS@pacs.local:104,VIEW@10.0.0.9:11112")
    settings = load_settings()
    assert [str(d) for d in settings.destinations] == ["PACS@pacs.local:104", "VIEW@10.0.0.9:11112"]


# --- secrets ----------------------------------------------------------------------------------


def test_broker_url_is_secret_and_never_printed() -> None:
    url = f"redis://worker:{PASSWORD}@redis.local:6379/0"
    settings = load_settings(broker_url=url)
    assert isinstance(settings.broker_url, SecretStr)
    assert settings.broker_url.get_secret_value() == url
    assert settings.embedded_queue is False
    for text in (
        repr(settings.broker_url),
        str(settings.broker_url),
        repr(settings),
        str(settings),
        settings.model_dump_json(),
    ):
        assert PASSWORD not in text


def test_broker_url_from_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_BROKER_URL", f"rediss://:{PASSWORD}@redis.local:6380/1")
    settings = load_settings()
    assert settings.broker_url is not None
    assert settings.broker_url.get_secret_value().startswith("rediss://")
    assert PASSWORD not in repr(settings)


def test_empty_broker_url_means_embedded_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_NODE_BROKER_URL", "")
    settings = load_settings()
    assert settings.broker_url is None
    assert settings.embedded_queue is True


# --- derived paths follow data_dir ------------------------------------------------------------


def test_derived_paths_follow_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "node-data"
    settings = load_settings(data_dir=data)
    assert settings.spool_path == data / "spool"
    assert settings.models_path == data / "models"
    assert settings.queue_dir == data / "queue"
    assert settings.ledger == f"sqlite:///{(data / 'ledger.sqlite').resolve()}"


def test_derived_paths_follow_data_dir_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "from-env"
    monkeypatch.setenv("CXR_NODE_DATA_DIR", str(data))
    settings = load_settings()
    assert settings.spool_path == data / "spool"
    assert settings.models_path == data / "models"
    assert settings.ledger.endswith(str((data / "ledger.sqlite").resolve()))


def test_explicit_paths_win_over_derived_ones(tmp_path: Path) -> None:
    config = _yaml(tmp_path, f"spool_dir: {tmp_path / 'fast-disk'}\n")
    settings = load_settings(config, data_dir=tmp_path / "data", ledger_url="sqlite:///:memory:")
    assert settings.spool_path == tmp_path / "fast-disk"
    assert settings.models_path == tmp_path / "data" / "models"
    assert settings.ledger == "sqlite:///:memory:"


# --- destinations as mappings, TLS, per-source routing ------------------------------------------


def test_destinations_as_mappings_with_tls_and_routes(tmp_path: Path) -> None:
    config = _yaml(
        tmp_path,
        """
destinations:
  - name: pacs
    ae_title: PACS
    host: pacs.local
    port: 2762
    tls: {ca_file: /etc/ca.pem, cert_file: /etc/me.pem, key_file: /etc/me.key}
  - VIEWER@viewer.local:11112
sources:
  - {ae_title: CR_ROOM_1, destinations: [pacs, VIEWER]}
  - {ae_title: DX_WARD, host: 10.2.0.0/16, destinations: [VIEWER]}
default_destinations: [pacs]
""",
    )
    settings = load_settings(config)
    pacs = settings.destination("pacs")
    assert pacs is not None and pacs.tls is not None
    assert pacs.tls.ca_file == Path("/etc/ca.pem") and pacs.tls.verify_hostname is True
    assert str(pacs) == "PACS@pacs.local:2762 (TLS)"
    assert settings.destination("VIEWER") is not None  # the short form is named by its AE title
    router = Router(settings.destinations, settings.sources, settings.default_destinations)
    assert router.destinations_for("CR_ROOM_1", "192.168.1.5") == ["pacs", "VIEWER"]
    assert router.destinations_for("DX_WARD", "10.2.3.4") == ["VIEWER"]
    assert router.destinations_for("DX_WARD", "10.9.3.4") == ["pacs"]  # wrong network: default
    assert router.destinations_for("UNKNOWN", None) == ["pacs"]


def test_without_default_destinations_unknown_sources_go_everywhere() -> None:
    settings = load_settings(destinations=["A@a:104", "B@b:104"])
    router = Router(settings.destinations, settings.sources, settings.default_destinations)
    assert router.destinations_for("ANY") == ["A", "B"]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("destinations: [PACS@a:104, PACS@b:104]\n", "unique"),
        ("destinations: [PACS@a:104]\nsources: [{ae_title: X, destinations: [nope]}]\n", "nope"),
        ("destinations: [PACS@a:104]\ndefault_destinations: [gone]\n", "gone"),
        (
            "destinations: [{ae_title: P, host: h, port: 1, tls: {cert_file: /c.pem}}]\n",
            "key_file",
        ),
        ("sources: [{ae_title: X, host: not-an-ip}]\n", "sources"),
    ],
)
def test_bad_routes_are_refused(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        load_settings(_yaml(tmp_path, text))


def test_hl7_and_dicomweb_destinations_are_validated_by_kind(tmp_path: Path) -> None:
    config = _yaml(
        tmp_path,
        "destinations:\n  - {name: ris, kind: hl7, host: ris, port: 2575, color: red}\n",
    )
    expected = "destinations.0.color': unknown key; allowed keys here: host, kind, name"
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        load_settings(config)
    ris = {"name": "ris", "kind": "hl7", "host": "ris", "port": 2575}
    settings = SettingsModel.model_validate(
        {"destinations": [ris | {"priority_map": {"critical": "S"}}]}
    )
    configured = settings.destination("ris")
    assert isinstance(configured, Hl7Destination)
    assert configured.priority_map == {"critical": "S", "abnormal": "A", "routine": "R"}
    archive = {"name": "a", "kind": "dicomweb", "url": "http://u:p@vna/dicom-web"}
    with pytest.raises(PydanticValidationError, match="without credentials"):
        SettingsModel.model_validate({"destinations": [archive]})
    with pytest.raises(PydanticValidationError, match="fax"):
        SettingsModel.model_validate({"destinations": [{"name": "a", "kind": "fax"}]})
