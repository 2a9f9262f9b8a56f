"""Bad model arguments get a message that says what is allowed, in every zoo family."""
import pytest
import timm

import nfzoo  # noqa: F401

BAD = {
    "output_stride": (dict(output_stride=7), r"output_stride=7 is not allowed; it must be 8, 16 or 32"),
    "norm": (dict(norm="bogus"), None),
    "out_indices": (dict(features_only=True, out_indices=(7,)), r"out_indices=\(7,\) is out of range.*0 \.\.\. 4"),
    "drop_path_rate": (dict(drop_path_rate=1.5), r"drop_path_rate=1.5 is not allowed; it must be a probability in \[0, 1\)"),
    "drop_rate": (dict(drop_rate=1.0), r"drop_rate=1.0 is not allowed"),
    "num_classes": (dict(num_classes=-1), r"num_classes=-1 is not allowed; it must be an integer >= 0"),
    "in_chans": (dict(in_chans=0), r"in_chans=0 is not allowed; it must be an integer >= 1"),
}
NORM_MESSAGES = {
    "resnet50_gn_ws": (ValueError, r"its name fixes the norm, so norm='bogus' cannot be given.*'bcn_ws'"),
    "nfnet_f0": (TypeError, r"unexpected argument\(s\) \['norm'\]: it takes numerics, num_classes"),
}


@pytest.mark.parametrize("model", ["resnet50_gn_ws", "nfnet_f0"])
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_argument_says_what_is_allowed(model, case):
    kwargs, message = BAD[case]
    error = ValueError
    if message is None:
        error, message = NORM_MESSAGES[model]
    with pytest.raises(error, match=message):
        timm.create_model(model, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(in_chans=1), dict(output_stride=16),
                                    dict(drop_rate=0.5, drop_path_rate=0.2)])
def test_allowed_values_still_build(kwargs):
    model = timm.create_model("resnet50_gn_ws", **kwargs)
    assert model.num_classes == kwargs.get("num_classes", 1000)
