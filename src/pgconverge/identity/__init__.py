"""Identity matching: phone normalization (SQL, audited against phonenumbers) and legacy→canonical mapping."""
