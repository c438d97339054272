//! `llmgate check`: written by a helper.
