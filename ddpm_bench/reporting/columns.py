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

# Table 1 (IS, FID, NLL test (train)): the paper's on CIFAR-10, the runs' on their own data
CONDITIONAL = "conditional"
IS = "IS"
IS_STD = "IS_std"
FID = "FID"
# the bound (`summary.json` quantity "bound") of each split: the run's most precise output, its image count
# and estimator; `reporting.tables.NLL_QUANTITIES` says which columns hold which quantity
NLL_TEST = "NLL_test"
NLL_TEST_STDERR = "NLL_test_stderr"
NLL_TEST_N = "NLL_test_n"
NLL_TEST_ESTIMATOR = "NLL_test_estimator"
NLL_TRAIN = "NLL_train"
NLL_TRAIN_STDERR = "NLL_train_stderr"
NLL_TRAIN_N = "NLL_train_n"
NLL_TRAIN_ESTIMATOR = "NLL_train_estimator"
# the probability-flow ODE likelihood of the same model: a likelihood, in columns of its own
NLL_ODE_TEST = "NLL_ODE_test"
NLL_ODE_TEST_STDERR = "NLL_ODE_test_stderr"
NLL_ODE_TEST_N = "NLL_ODE_test_n"
NLL_ODE_TEST_ESTIMATOR = "NLL_ODE_test_estimator"
NLL_ODE_TRAIN = "NLL_ODE_train"
NLL_ODE_TRAIN_STDERR = "NLL_ODE_train_stderr"
NLL_ODE_TRAIN_N = "NLL_ODE_train_n"
NLL_ODE_TRAIN_ESTIMATOR = "NLL_ODE_train_estimator"
# the continuous-time bound (VDM) of the same model: another bound than the discrete one, in its own columns
NLL_CONT_TEST = "NLL_continuous_test"
NLL_CONT_TEST_STDERR = "NLL_continuous_test_stderr"
NLL_CONT_TEST_N = "NLL_continuous_test_n"
NLL_CONT_TEST_ESTIMATOR = "NLL_continuous_test_estimator"
NLL_CONT_TRAIN = "NLL_continuous_train"
NLL_CONT_TRAIN_STDERR = "NLL_continuous_train_stderr"
NLL_CONT_TRAIN_N = "NLL_continuous_train_n"
NLL_CONT_TRAIN_ESTIMATOR = "NLL_continuous_train_estimator"
DELTA_IS = "delta_IS"
DELTA_FID = "delta_FID"
DELTA_NLL_TEST = "delta_NLL_test"
DELTA_NLL_TRAIN = "delta_NLL_train"
COMPARISON = "comparison"  # "comparable" or "not comparable: REASONS" (deltas only where comparable)
TABLE1_COLUMNS = (MODEL, ORIGIN, DATA, CONDITIONAL, IS, IS_STD, FID,
                  NLL_TEST, NLL_TEST_STDERR, NLL_TEST_N, NLL_TEST_ESTIMATOR,
                  NLL_TRAIN, NLL_TRAIN_STDERR, NLL_TRAIN_N, NLL_TRAIN_ESTIMATOR,
                  NLL_ODE_TEST, NLL_ODE_TEST_STDERR, NLL_ODE_TEST_N, NLL_ODE_TEST_ESTIMATOR,
                  NLL_ODE_TRAIN, NLL_ODE_TRAIN_STDERR, NLL_ODE_TRAIN_N, NLL_ODE_TRAIN_ESTIMATOR,
                  NLL_CONT_TEST, NLL_CONT_TEST_STDERR, NLL_CONT_TEST_N, NLL_CONT_TEST_ESTIMATOR,
                  NLL_CONT_TRAIN, NLL_CONT_TRAIN_STDERR, NLL_CONT_TRAIN_N, NLL_CONT_TRAIN_ESTIMATOR,
                  PAPER_ROW, COMPARISON, DELTA_IS, DELTA_FID, DELTA_NLL_TEST, DELTA_NLL_TRAIN, SOURCE)
# what the Markdown tables show: the paper's own columns (the CSV holds every column)
SHOW_MODEL = "Model"
SHOW_IS = "IS"
SHOW_FID = "FID"
SHOW_NLL_BOUND = "NLL Test (Train)"  # the bound: "≤ test ± stderr (train)"
SHOW_NLL_ODE = "NLL (ODE) Test (Train)"  # the ODE likelihood: "test ± stderr (train)", an estimate, no "≤"
SHOW_NLL_CONTINUOUS = "NLL (continuous) Test (Train)"  # the continuous-time bound: "≤ test ± stderr (train)"
SHOW_VERSUS = "vs paper"
TABLE1_DISPLAY = (SHOW_MODEL, SHOW_IS, SHOW_FID, SHOW_NLL_BOUND, SHOW_NLL_CONTINUOUS, SHOW_NLL_ODE, SHOW_VERSUS)

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
