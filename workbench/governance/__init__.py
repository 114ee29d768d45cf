"""Release governance: identities, the release bundle, approval records, gates and promotion."""
