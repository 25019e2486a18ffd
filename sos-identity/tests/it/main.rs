//! Integration tests of sos-identity through its public API.
