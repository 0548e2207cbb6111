//! Attacks: one test per hole the trust-boundary review found. Each tries the attack as an
//! outsider, another tenant or an over-reaching insider would, and asserts that it fails and
//! that nothing was written or leaked.

mod external_data;
