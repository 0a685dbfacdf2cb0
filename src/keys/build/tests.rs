//! placeholder until the keys helper lands its tests
