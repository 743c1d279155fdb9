//! Boot-configuration tests with real-shaped files.
