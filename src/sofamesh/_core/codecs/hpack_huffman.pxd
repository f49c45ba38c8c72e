# The HPACK Huffman code (RFC 7541 Appendix B): a table-driven decoder (4 bits a step,
# the table built once at import from the code lengths) and an encoder.
#
# Contract: the functions never allocate and never raise. `huffman_decode` writes at most
# n * 8 // 5 bytes (no code is shorter than 5 bits) and returns the decoded length, or -1
# when the string is malformed: the EOS symbol inside it, padding longer than 7 bits, or
# padding that is not a prefix of EOS (all ones). A caller that wants to bound what it
# allocates checks n first, then the decoded length, before making an object.

cdef Py_ssize_t huffman_decode(const unsigned char* src, Py_ssize_t n,
                               unsigned char* dst) noexcept nogil
cdef Py_ssize_t huffman_encoded_length(const unsigned char* src, Py_ssize_t n) noexcept nogil
# writes huffman_encoded_length(src, n) bytes to dst; returns that length
cdef Py_ssize_t huffman_encode(const unsigned char* src, Py_ssize_t n,
                               unsigned char* dst) noexcept nogil
