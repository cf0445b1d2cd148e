from __future__ import annotations

import pickle

import pytest

from eyenet import errors


@pytest.mark.parametrize("exc", [
    errors.ConfigError("bad window", "window_s", -5, "greater than 0"),
    errors.PromotionRejectedError("not promoted", ["alert rate too high"]),
    errors.ArtifactIntegrityError("weights.pt was modified", "weights.pt"),
    errors.StoreConnectionError("unreachable"),
    errors.ModelNotFoundError("no version 3"),
])
def test_exceptions_survive_pickling_with_their_fields(exc):
    # Exceptions cross Ray actor boundaries by pickling.
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)
    assert isinstance(back, errors.EyeNetError)


def test_tree_matches_the_docstring():
    for name in ("ConfigError", "TelemetryError", "StoreError", "RegistryError", "ArtifactError"):
        assert issubclass(getattr(errors, name), errors.EyeNetError)
        assert name in errors.__doc__
    assert issubclass(errors.StoreConnectionError, errors.StoreError)
    assert issubclass(errors.PromotionRejectedError, errors.RegistryError)
    assert issubclass(errors.ArtifactIntegrityError, errors.ArtifactError)
