# Reads an lld link map (-Map) and prints, for each function section of .text, its
# address and size (hex), the symbol that names it and a key for it, tab-separated:
#   225981  8c  _RNvMNtCs2Nb3gJ4iU0I_5alloc6string...  <alloc::string::String>::from_utf8
# The key is lld's demangled name without the hashes that change from one build, crate
# version or compiler to the next, so a list of keys outlives the build it came from.
# Plain POSIX awk (mawk in Debian images).

# A function section: "<file>:(.text.<symbol>)"; LLVM may prefix the symbol with what
# it knows of the function's temperature.
/:\(\.text\.[^)]*\)$/ {
    section = $0
    sub(/.*:\(\.text\./, "", section)
    sub(/\)$/, "", section)
    sub(/^(unlikely|hot|startup|exit)\./, "", section)
    address = $1
    size = $3
    next
}
# Any other input or output section ends the one before.
/:\(/ || / \.[a-z_.]+$/ && NF == 5 { section = ""; next }
# The first symbol line after a function section: four numbers, then the demangled name.
section != "" {
    key = $0
    sub(/^ *[0-9a-f]+ +[0-9a-f]+ +[0-9a-f]+ +[0-9]+ +/, "", key)
    # Legacy mangling ends in "::h" and 16 hex digits.
    if (match(key, /::h[0-9a-f]+$/) && RLENGTH == 19)
        key = substr(key, 1, RSTART - 1)
    print address "\t" size "\t" section "\t" key
    section = ""
}
