"""The portal's record of candidates and its ICE credential checks."""

from __future__ import annotations

import pytest

from gateway_pkg.devportal.state import PortalState, RequestError, new_ice_credentials, parse_ice_credentials


def test_candidates_are_added_minus_invalidated_in_order():
    state = PortalState()
    state.add_candidates("gw1", ["c1", "c2"], ["candidate:a", "candidate:b"])
    state.add_candidates("gw1", ["c1"], ["candidate:b", "candidate:c", "candidate:c"])
    state.add_candidates("gw2", ["c1"], ["candidate:z"])
    assert state.candidates_for("c1", "gw1") == ["candidate:a", "candidate:b", "candidate:c"]
    assert state.candidates_for("c1") == ["candidate:a", "candidate:b", "candidate:c", "candidate:z"]
    state.invalidate_candidates("gw1", ["c1"], ["candidate:b", "candidate:unknown"])
    assert state.candidates_for("c1", "gw1") == ["candidate:a", "candidate:c"]
    assert state.candidates_for("c2", "gw1") == ["candidate:a", "candidate:b"]
    state.forget_candidates("gw1", "c1")
    assert state.candidates_for("c1") == ["candidate:z"] and state.candidates_for("nobody") == []


def test_ice_credentials_follow_rfc_8445():
    generated = new_ice_credentials()
    assert parse_ice_credentials(generated, "x") == generated
    good = {"username": "Ab+/", "password": "p" * 22}
    assert parse_ice_credentials(good | {"extra": 1}, "client.ice") == good
    for bad, field in (({"username": "abc", "password": "p" * 22}, "username"),
                       ({"username": "abcd", "password": "p" * 21}, "password"),
                       ({"username": "ab:cd", "password": "p" * 22}, "username"),
                       ({"username": "abcd"}, "password")):
        with pytest.raises(RequestError, match=rf"client\.ice\.{field}") as info:
            parse_ice_credentials(bad, "client.ice")
        assert info.value.status == 400
    with pytest.raises(RequestError, match=r"client\.ice must be"):
        parse_ice_credentials("abcd:pw", "client.ice")
