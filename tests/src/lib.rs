//! Cross-layer tests live in `tests/`.
