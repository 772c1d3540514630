//! Kiln's coordinator: assembles the derivation graph, skips cached outputs, schedules builds.
