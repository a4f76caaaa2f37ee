//! Masking of sensitive values in results, in place on the result bytes. (Being built.)
