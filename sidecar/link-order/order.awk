# Makes lld's --symbol-ordering-file for this build from the recorded list.
#   awk -v min_found=0.8 -f order.awk <this build's symbols.awk output> hot-functions.txt
# A listed function is placed by its exact symbol when this build has it (same compiler,
# same Cargo.lock), else by its key when few functions share the key (a generic's
# instances share one under legacy mangling: placing hundreds for one would defeat the
# purpose). Fails when less than min_found of the list is found: the list is stale.

BEGIN { FS = "\t"; max_per_key = 8 }

# This build's functions.
NR == FNR {
    exists[$3] = 1
    count[$4]++
    by_key[$4] = by_key[$4] "\t" $3
    next
}

/^#/ || NF < 2 { next }

{
    listed++
    if ($1 in exists) {
        place($1)
        exact++
    } else if (count[$2] > 0 && count[$2] <= max_per_key) {
        n = split(substr(by_key[$2], 2), symbols, "\t")
        for (i = 1; i <= n; i++)
            place(symbols[i])
        by_name++
    }
}

function place(symbol) {
    if (!(symbol in placed)) {
        placed[symbol] = 1
        print symbol
    }
}

END {
    found = exact + by_name
    printf "link order: %d of %d listed functions found (%d by symbol, %d by name)\n", found, listed, exact, by_name > "/dev/stderr"
    if (found < min_found * listed || listed == 0 && min_found > 0) {
        printf "link order: too few found; sidecar/link-order/hot-functions.txt is stale, record it again (sidecar/link-order/README.md)\n" > "/dev/stderr"
        exit 1
    }
}
