from appliance.errors import EXIT_CODES, EnclaveError


def test_exit_codes_are_unique_and_documented():
    assert len(EXIT_CODES) == len(set(EXIT_CODES))
    for code, cls in EXIT_CODES.items():
        assert issubclass(cls, EnclaveError)
        assert cls.summary and cls.summary != EnclaveError.summary, cls
        assert 2 <= code <= 125
