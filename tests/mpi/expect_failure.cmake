# cmake -DMPIEXEC=... -DNP=2 -DFLAGS="..." -DPROGRAM=... -DMODE=... -DEXPECT=regex
#       -DLIMIT=seconds -P expect_failure.cmake
# Runs PROGRAM MODE on NP ranks and passes when the job exits non-zero, within LIMIT seconds,
# with output matching EXPECT: a failing rank must bring the whole job down with its message.
separate_arguments(flags UNIX_COMMAND "${FLAGS}")
string(TIMESTAMP start "%s")
execute_process(COMMAND ${MPIEXEC} -n ${NP} ${flags} ${PROGRAM} ${MODE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE output ERROR_VARIABLE output
                TIMEOUT ${LIMIT})
string(TIMESTAMP end "%s")
math(EXPR seconds "${end} - ${start}")
message("${output}")
message("exit: ${rc} after ${seconds} s")
if(rc STREQUAL "0")
  message(FATAL_ERROR "the job exited 0; a failing rank must make it exit non-zero")
endif()
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the job did not come down by itself (${rc})")
endif()
if(NOT output MATCHES "${EXPECT}")
  message(FATAL_ERROR "the output lacks the failing rank's message (${EXPECT})")
endif()
