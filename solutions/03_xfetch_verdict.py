"""Notebook 03, "Build it yourself": the XFetch verdict (checker: "xfetch_verdict")."""

import math


def refresh_early(now, expiry, delta, beta, rand):
    # -ln(rand) is an Exp(1) draw: refresh when expiry is closer than a random gap of
    # about delta * beta (Vattani et al., PVLDB 2015).
    return now - delta * beta * math.log(rand) >= expiry
