"""``musc automations install``: the Prefect Automations declared in configs/ (the files of
``prefect automation create --from-file``) created on the server PREFECT_API_URL names, or updated
in place when one of the same name is there: running it again changes nothing but what the file
changed. The files are the one place the automations are declared."""

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from musc.errors import MuscError

from . import terminal

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_FILES = (CONFIGS / "automation-crashed.yaml",)  # the daily one needs a notification block's id first
FLOW_HOME = "MUSC_FLOW_HOME"  # a worker's checkout (prefect.yaml's pull step)
PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"  # configs/automation-daily.yaml's, to be replaced


class AutomationError(MuscError):
    """An automation file that cannot be installed, or no server to install it on."""


def install(files: Annotated[Optional[List[Path]], typer.Argument(
        help="Automation files (YAML, with an `automations:` list). Default: configs/automation-crashed.yaml "
             "(flow runs whose machine died marked Crashed).")] = None) -> None:
    """Create the automations of the files on the Prefect server (PREFECT_API_URL), or update those of the same name."""
    def go():
        out = Console(soft_wrap=True, highlight=False, markup=False)
        for line in install_automations(files or default_files()):
            out.print(line)
    terminal.prefect_environment()
    terminal.run_guarded(go)


def default_files() -> list[Path]:
    """The default automation files: in the checkout musc runs from, else (musc installed from a wheel,
    as in the Docker image or a git-clone worker, which holds no configs/) under $MUSC_FLOW_HOME or the
    current folder (the image's and the clone's working directory); AutomationError naming where it
    looked when none is there."""
    import os
    homes = [CONFIGS.parent, *([Path(os.environ[FLOW_HOME])] if os.environ.get(FLOW_HOME) else []), Path.cwd()]
    for home in homes:
        found = [home / "configs" / path.name for path in DEFAULT_FILES]
        if all(path.is_file() for path in found):
            return found
    raise AutomationError(f"configs/{DEFAULT_FILES[0].name}: not found in {', '.join(str(h) for h in homes)} "
                          f"(musc installed without its checkout): name the file, or run it in the checkout "
                          f"or with {FLOW_HOME} set to it")


def declared(path: Path) -> list:
    """The automations of one file, checked as Prefect reads them (``AutomationCore``)."""
    import yaml
    from pydantic import ValidationError
    from prefect.events.schemas.automations import AutomationCore
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise AutomationError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise AutomationError(f"{path}: not a text file (byte {error.start} is not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise AutomationError(f"{path}: not YAML ({str(error).splitlines()[0]})") from None
    items = data.get("automations") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise AutomationError(f"{path}: no `automations:` list")
    if PLACEHOLDER_ID in text:
        raise AutomationError(f"{path}: put your notification block's id in place of {PLACEHOLDER_ID} first")
    automations = []
    for index, item in enumerate(items):
        try:
            automations.append(AutomationCore.model_validate(item))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in (f"automations[{index}]", *first["loc"]))
            raise AutomationError(f"{path}: not a Prefect automation: {where}: {first['msg']}") from None
    return automations


def install_automations(files: list[Path]) -> list[str]:
    """Each automation of ``files`` created, or updated when the server has one of its name; what
    was done, one line each. Every file is checked before the server is touched."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    automations = [(path, automation) for path in files for automation in declared(path)]
    url = get_current_settings().api.url
    if not url:
        raise AutomationError("no Prefect server configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    lines = []
    with get_client(sync_client=True) as client:
        if client.api_healthcheck() is not None:
            raise AutomationError(f"no Prefect server answers at {url} (PREFECT_API_URL): start it, or name the right one")
        for path, automation in automations:
            found = client.read_automations_by_name(automation.name)
            if found:
                client.update_automation(found[0].id, automation)
                lines.append(f"updated {automation.name} ({found[0].id}) from {path}")
                lines += [f"warning: another automation named {automation.name} left as it is ({other.id}); "
                          f"delete it: prefect automation delete --id {other.id}" for other in found[1:]]
            else:
                lines.append(f"created {automation.name} ({client.create_automation(automation)}) from {path}")
    return lines
