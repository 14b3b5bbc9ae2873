"""Output keys and column names of `rate-distortion` and `report`, defined once."""

# curve.csv and table4.csv
T = "t"
REVERSE_TIME = "reverse_time"
RATE_BPD = "rate_bpd"
RMSE = "rmse"
RMSE_PER_IMAGE = "rmse_per_image"
PAPER_RATE_BPD = "paper_rate_bpd"
PAPER_RMSE = "paper_rmse"
DELTA_RATE_BPD = "delta_rate_bpd"
DELTA_RMSE = "delta_rmse"
CURVE_COLUMNS = (T, REVERSE_TIME, RATE_BPD, RMSE, RMSE_PER_IMAGE)
TABLE4_COLUMNS = (REVERSE_TIME, RATE_BPD, RMSE, PAPER_RATE_BPD, PAPER_RMSE, DELTA_RATE_BPD, DELTA_RMSE)

# shared by the report tables
MODEL = "model"
ORIGIN = "origin"  # ORIGIN_PAPER or ORIGIN_MEASURED
ORIGIN_PAPER = "paper"
ORIGIN_MEASURED = "measured"
DATA = "data"
PAPER_ROW = "paper_row"  # the paper row a measured row is compared with (deltas are measured - paper)
SOURCE = "source"  # short provenance of the row; the per-cell detail is in the companion *.sources.json

# Table 1 (CIFAR-10: IS, FID, NLL test (train))
CONDITIONAL = "conditional"
IS = "IS"
IS_STD = "IS_std"
FID = "FID"
NLL_TEST = "NLL_test"
NLL_TEST_STDERR = "NLL_test_stderr"
NLL_TRAIN = "NLL_train"
NLL_TRAIN_STDERR = "NLL_train_stderr"
DELTA_IS = "delta_IS"
DELTA_FID = "delta_FID"
DELTA_NLL_TEST = "delta_NLL_test"
DELTA_NLL_TRAIN = "delta_NLL_train"
COMPARISON = "comparison"  # "comparable" or "not comparable: REASONS" (deltas only where comparable)
TABLE1_COLUMNS = (MODEL, ORIGIN, DATA, CONDITIONAL, IS, IS_STD, FID, NLL_TEST, NLL_TEST_STDERR, NLL_TRAIN,
                  NLL_TRAIN_STDERR, PAPER_ROW, COMPARISON, DELTA_IS, DELTA_FID, DELTA_NLL_TEST, DELTA_NLL_TRAIN, SOURCE)
# what the Markdown tables show: the paper's own columns (the CSV holds every column)
TABLE1_DISPLAY = ("Model", "IS", "FID", "NLL Test (Train)", "vs paper")

# Table 2 (ablation: mean parameterisation x objective x variance)
MEAN_TYPE = "mean_type"
OBJECTIVE = "objective"
VAR_TYPE = "var_type"  # the paper's grouping: "fixed" or "learned" (or the run's own name otherwise)
VAR_TYPE_RUN = "var_type_run"  # the run's exact variance type (fixed-large, fixed-small, ...)
PAPER_IS = "paper_IS"
PAPER_IS_STD = "paper_IS_std"
PAPER_FID = "paper_FID"
TABLE2_COLUMNS = (MEAN_TYPE, OBJECTIVE, VAR_TYPE, VAR_TYPE_RUN, DATA, IS, IS_STD, FID, PAPER_IS, PAPER_IS_STD,
                  PAPER_FID, DELTA_IS, DELTA_FID, SOURCE)

# Table 3 (FID on LSUN 256 and CelebA-HQ 256)
LSUN_BEDROOM = "LSUN Bedroom"
LSUN_CHURCH = "LSUN Church"
LSUN_CAT = "LSUN Cat"
CELEBAHQ = "CelebA-HQ 256"
TABLE3_DATASETS = (LSUN_BEDROOM, LSUN_CHURCH, LSUN_CAT, CELEBAHQ)
TABLE3_COLUMNS = (MODEL, ORIGIN, *TABLE3_DATASETS, PAPER_ROW, DELTA_FID, SOURCE)

# Table 4 in the report: the rate-distortion table4 columns, then where the row came from
TABLE4_REPORT_COLUMNS = (*TABLE4_COLUMNS, SOURCE)
