"""Test helper, run as a script in a fresh process: load a published folder the way a client
that nobody here wrote does, and print the logits for a saved input, or the error, as JSON.

    python hub_clients.py CLIENT NFZOO SOURCE INPUT

CLIENT is ``timm`` (``timm.create_model('hf-hub:' + SOURCE, pretrained=True)``, SOURCE a repo id
in the offline cache that HF_HUB_CACHE names) or ``transformers``
(``AutoModelForImageClassification.from_pretrained(SOURCE)``, SOURCE a folder); NFZOO is 1 to
``import nfzoo`` first, 0 not to. The result also holds the class names the client shows
(transformers' ``id2label``, timm's ``pretrained_cfg['label_names']``).
"""
import json
import sys

import torch


def load(client: str, source: str) -> torch.nn.Module:
    if client == "timm":
        import timm
        return timm.create_model(f"hf-hub:{source}", pretrained=True)
    from transformers import AutoModelForImageClassification
    return AutoModelForImageClassification.from_pretrained(source)


def main() -> None:
    client, with_nfzoo, source, input_path = sys.argv[1:5]
    if with_nfzoo == "1":
        import nfzoo  # noqa: F401
    x = torch.load(input_path)
    try:
        model = load(client, source).eval()
        with torch.no_grad():
            out = model(x)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        config = getattr(model, "config", None)
        labels = list(config.id2label.values()) if config is not None else model.pretrained_cfg.get("label_names")
        result = {"logits": logits.tolist(), "labels": labels}
    except Exception as e:  # the message is what the test checks
        result = {"error": f"{type(e).__name__}: {e}"}
    result["nfzoo_imported"] = "nfzoo" in sys.modules
    print(json.dumps(result))


if __name__ == "__main__":
    main()
