"""The vital-sign codes the twin tests use, with their canonical units."""

RR, SPO2, FIO2, SBP, HR, ACVPU_CODE, TEMP = (
    "9279-1",
    "59408-5",
    "3150-0",
    "8480-6",
    "8867-4",
    "80288-4",
    "8310-5",
)
GLUCOSE = "2339-0"
UNITS = {
    RR: "/min",
    SPO2: "%",
    FIO2: "%",
    SBP: "mm[Hg]",
    HR: "/min",
    ACVPU_CODE: "",
    TEMP: "Cel",
    GLUCOSE: "mg/dL",
}
