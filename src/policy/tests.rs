//! Table tests of the decision (filled in below).
