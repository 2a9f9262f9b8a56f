"""Published folders in clients nobody here wrote, each in a fresh process: timm's ``hf-hub:``
(from an offline Hub cache) and transformers' ``AutoModelForImageClassification``, without and
with ``import nfzoo``. Without nfzoo they must refuse with an error naming nfzoo (never build
timm's own namesake or load part of the weights); with nfzoo they must give nfzoo's logits.
The same holds for a zoo model that a user saves with timm's own ``save_for_hf``."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import nfzoo
from hub_cache import add_to_hf_cache
from nfzoo.weights.publish import published_name
from nfzoo.models.nfnet_mini import FASHION_MNIST_CLASSES
from nfzoo.weights.publish import write_repo

CLIENTS = Path(__file__).with_name("hub_clients.py")
REPO = "nfzoo/nfnet_mini.nfzoo_fmnist"
USER_REPO = "someone/my-nfnet-mini"


def run_client(client: str, with_nfzoo: bool, source: str, x_path: Path, cache: Path) -> dict:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(CLIENTS), client, str(int(with_nfzoo)), source, str(x_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["nfzoo_imported"] == with_nfzoo
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A published folder and a user's save_for_hf folder of random nfnet_mini weights, both in an
    offline Hub cache; an input batch and nfzoo's logits for it."""
    tmp = tmp_path_factory.mktemp("clients")
    torch.manual_seed(0)
    model = timm.create_model("nfnet_mini").eval()
    (tmp / "weights").mkdir()
    safetensors.torch.save_file(model.state_dict(), tmp / "weights" / "model.safetensors")
    folder = write_repo(tmp / "weights", "nfnet_mini.nfzoo_fmnist", tmp / "published")
    timm.models.save_for_hf(model, tmp / "user", safe_serialization=True)
    cache = tmp / "hf_cache"
    add_to_hf_cache(cache, REPO, {p.name: p for p in folder.iterdir()})
    add_to_hf_cache(cache, USER_REPO, {p.name: p for p in (tmp / "user").iterdir()})
    x = torch.randn(2, 1, 28, 28)
    torch.save(x, tmp / "x.pt")
    with torch.no_grad():
        logits = model(x)
    return dict(folder=folder, user=tmp / "user", cache=cache, x=tmp / "x.pt", logits=logits)


@pytest.mark.parametrize("client", ["timm", "transformers"])
def test_published_folder_without_nfzoo_is_refused_naming_nfzoo(setup, client):
    source = REPO if client == "timm" else str(setup["folder"])
    result = run_client(client, False, source, setup["x"], setup["cache"])
    assert "logits" not in result and "nfzoo" in result["error"]


@pytest.mark.parametrize("client", ["timm", "transformers"])
def test_published_folder_with_nfzoo_gives_nfzoos_logits(setup, client):
    source = REPO if client == "timm" else str(setup["folder"])
    result = run_client(client, True, source, setup["x"], setup["cache"])
    assert "error" not in result, result.get("error")
    torch.testing.assert_close(torch.tensor(result["logits"]), setup["logits"])
    assert result["labels"] == list(FASHION_MNIST_CLASSES)  # not transformers' LABEL_0 ...


@pytest.mark.parametrize("with_nfzoo", [False, True])
def test_users_save_for_hf_is_refused_without_nfzoo_and_loads_with_it(setup, with_nfzoo):
    result = run_client("timm", with_nfzoo, USER_REPO, setup["x"], setup["cache"])
    if with_nfzoo:
        torch.testing.assert_close(torch.tensor(result["logits"]), setup["logits"])
    else:
        assert "logits" not in result and "Unknown model (nfzoo_nfnet_mini)" in result["error"]


def test_every_zoo_model_states_a_name_plain_timm_does_not_know():
    """nfnet_f0 above all: plain timm has a different, weightless model of that name."""
    with torch.device("meta"):
        stated = {name: timm.create_model(name).pretrained_cfg["architecture"] for name in sorted(nfzoo.ZOO_MODELS)}
    assert stated == {name: published_name(name) for name in stated}
    assert all(timm.create_model(a, pretrained=False, num_classes=3).num_classes == 3
               for a in ("nfzoo_nfnet_mini", "nfzoo_resnet50_gn_ws"))
    assert not timm.list_models("nfzoo_*")  # resolvable, not listed twice
    script = textwrap.dedent(f"""
        import json, timm
        print(json.dumps([timm.is_model(n) for n in {sorted(stated.values())!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False] * len(stated)
