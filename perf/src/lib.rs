//! The Snowflake test double and perf harness.
