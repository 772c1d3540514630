//! Kiln's lazy Nix evaluator: parses with rnix, streams derivations as they are instantiated.
